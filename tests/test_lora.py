"""LoRAs from models/Lora, applied by prompt tag without reloading, and taken off exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.generation.request import Txt2ImgRequest
from backend.images.infotext import parse_infotext
from backend.models.ldm_export import unet_key_to_ldm
from backend.networks.lora import addnet_hash
from backend.prompts.conditioning import PromptEncoder
from tests.fixtures.tiny_networks import write_kohya_lora, write_lycoris, write_peft_lora

SD1 = "sd1.safetensors"


@pytest.fixture
def ctx(app_context):
    return app_context


@pytest.fixture
def pipe(ctx):
    return ctx.manager.load(SD1).pipe


@pytest.fixture
def lora_dir(ctx):
    folder = ctx.networks.loras.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def generate(ctx, prompt: str, checkpoint: str = SD1, **fields):
    request = Txt2ImgRequest(prompt=prompt, width=64, height=64, steps=2, seed=7, save_images=False,
                             checkpoint=checkpoint, **fields)
    return ctx.service.txt2img(request)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def weights(pipe) -> dict[str, torch.Tensor]:
    state = {"unet." + k: v.clone() for k, v in pipe.unet.state_dict().items()}
    state |= {"te." + k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    return state


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"{len(changed)} tensors differ, e.g. {changed[:3]}"


def test_lora_changes_the_picture_weight_zero_does_not_and_removal_restores_every_bit(ctx, pipe, lora_dir):
    write_kohya_lora(pipe, lora_dir / "ink.safetensors", seed=1)
    ctx.networks.refresh()
    before = weights(pipe)
    plain = pixels(generate(ctx, "a cat"))

    assert np.array_equal(pixels(generate(ctx, "a cat <lora:ink:0>")), plain)
    assert_same_weights(weights(pipe), before)

    with_lora = generate(ctx, "a cat <lora:ink:1>")
    assert not np.array_equal(pixels(with_lora), plain)
    assert not torch.equal(pipe.unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                           before["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    assert ctx.manager.load(SD1).pipe is pipe  # never reloaded

    assert np.array_equal(pixels(generate(ctx, "a cat")), plain)
    assert_same_weights(weights(pipe), before)


def test_infotext_records_the_lora_hash_and_keeps_the_tag_in_the_prompt(ctx, pipe, lora_dir):
    path = write_kohya_lora(pipe, lora_dir / "ink.safetensors", seed=1)
    ctx.networks.refresh()
    result = generate(ctx, "a cat <lora:ink:0.7>")
    infotext = result.infotexts[0]
    assert infotext.startswith("a cat <lora:ink:0.7>\n")
    assert f'Lora hashes: "ink: {addnet_hash(path)[:12]}"' in infotext
    assert not result.warnings
    parsed = parse_infotext(infotext)  # what PNG Info and the paste button read: the tag comes back
    assert parsed["Prompt"] == "a cat <lora:ink:0.7>" and parsed["Lora hashes"] == f"ink: {addnet_hash(path)[:12]}"


def test_two_loras_stack_and_negative_weights_subtract(ctx, pipe, lora_dir):
    write_kohya_lora(pipe, lora_dir / "a.safetensors", seed=1)
    write_kohya_lora(pipe, lora_dir / "b.safetensors", seed=2)
    ctx.networks.refresh()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    base = pipe.unet.state_dict()[key].clone()

    def delta(prompt):
        generate(ctx, prompt)
        return pipe.unet.state_dict()[key].clone() - base

    da, db = delta("x <lora:a:1>"), delta("x <lora:b:1>")
    both = delta("x <lora:a:1> <lora:b:1>")
    torch.testing.assert_close(both, da + db, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta("x <lora:a:-0.5>"), -0.5 * da, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta("x <lora:a:0:1>"), da)  # text encoder 0, UNet 1


def test_text_encoder_only_lora_changes_the_text_embedding_and_not_the_unet(ctx, pipe, lora_dir):
    write_kohya_lora(pipe, lora_dir / "words.safetensors", seed=3, parts=("text_encoder",))
    ctx.networks.refresh()
    plain_embeds = PromptEncoder(pipe).encode("a cat").embeds.clone()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = generate(ctx, "a cat <lora:words:1>")
    assert 'Lora hashes: "words: ' in result.infotexts[0]
    assert not torch.equal(PromptEncoder(pipe).encode("a cat").embeds, plain_embeds)
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())
    generate(ctx, "a cat")
    assert torch.equal(PromptEncoder(pipe).encode("a cat").embeds, plain_embeds)


@pytest.mark.parametrize("layout", ["peft", "loha", "lokr", "ldm-names"])
def test_other_layouts_apply_to_every_module_they_name(ctx, pipe, lora_dir, layout):
    path = lora_dir / f"{layout}.safetensors"
    if layout == "peft":
        write_peft_lora(pipe, path, seed=4)
    elif layout in ("loha", "lokr"):
        write_lycoris(pipe, path, layout, seed=5)
    else:  # kohya keys in the original (LDM) UNet layout: lora_unet_input_blocks_1_1_...
        diffusers_named = write_kohya_lora(pipe, lora_dir / "tmp.safetensors", seed=6, parts=("unet",))
        from safetensors.torch import load_file

        renamed = {}
        for key, value in load_file(str(diffusers_named)).items():
            module, suffix = key.removeprefix("lora_unet_").split(".", 1)
            name = next(n for n, _ in pipe.unet.named_modules() if n.replace(".", "_") == module)
            ldm = unet_key_to_ldm(pipe.unet, name + ".weight").removesuffix(".weight").replace(".", "_")
            renamed[f"lora_unet_{ldm}.{suffix}"] = value
        diffusers_named.unlink()
        save_file(renamed, str(path))
    ctx.networks.refresh()
    before = weights(pipe)
    result = generate(ctx, f"a cat <lora:{layout}:1>")
    assert not result.warnings, result.warnings
    assert f'"{layout}: ' in result.infotexts[0]
    changed = [k for k, v in weights(pipe).items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "q_proj.weight",
                                       "k_proj.weight", "v_proj.weight", "out_proj.weight")) for k in changed)
    generate(ctx, "a cat")
    assert_same_weights(weights(pipe), before)


# --- bad input: a clear message, and the picture still comes -----------------------------------

def test_a_lora_whose_keys_match_nothing_is_reported_not_applied(ctx, pipe, lora_dir):
    save_file({"lora_unet_no_such_block.lora_down.weight": torch.ones(2, 8),
               "lora_unet_no_such_block.lora_up.weight": torch.ones(8, 2)}, str(lora_dir / "stray.safetensors"))
    ctx.networks.refresh()
    plain = pixels(generate(ctx, "a cat"))
    result = generate(ctx, "a cat <lora:stray:1>")
    assert np.array_equal(pixels(result), plain)
    assert "Lora hashes" not in result.infotexts[0]
    assert any("none of its 1 modules matched" in w and "not applied" in w for w in result.warnings), result.warnings


def test_an_sdxl_lora_on_an_sd1_model_is_refused_with_the_reason(ctx, lora_dir):
    sdxl_pipe = ctx.manager.load("sdxl.safetensors").pipe
    write_kohya_lora(sdxl_pipe, lora_dir / "xl-style.safetensors", seed=7,
                     metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    ctx.networks.refresh()
    sd1 = ctx.manager.load(SD1).pipe
    before = weights(sd1)
    result = generate(ctx, "a cat <lora:xl-style:1>")
    assert result.images
    message = " ".join(result.warnings)
    assert "does not fit sd1.safetensors" in message and "sdxl_base_v1-0" in message, message
    assert_same_weights(weights(sd1), before)


def test_an_sdxl_lora_applies_to_both_sdxl_text_encoders(ctx, lora_dir):
    sdxl_pipe = ctx.manager.load("sdxl.safetensors").pipe
    write_kohya_lora(sdxl_pipe, lora_dir / "xl.safetensors", seed=8, parts=("unet", "text_encoder", "text_encoder_2"))
    ctx.networks.refresh()
    te2_before = {k: v.clone() for k, v in sdxl_pipe.text_encoder_2.state_dict().items()}
    result = generate(ctx, "a cat <lora:xl:1>", checkpoint="sdxl.safetensors")
    assert not result.warnings, result.warnings
    assert any(not torch.equal(v, te2_before[k]) for k, v in sdxl_pipe.text_encoder_2.state_dict().items())


@pytest.mark.parametrize("tag, expected", [
    ("<lora:missing:1>", "no LoRA named 'missing'"),
    ("<lora:../../config:1>", "no LoRA named '../../config'"),
    ("<lora:broken:1>", "NaN or infinite"),
    ("<lora:notalora:1>", "is it a LoRA?"),
    ("<hypernet:x:1>", "hypernetworks are not supported"),
    ("<embedding:x:1>", "no extra network of kind 'embedding'"),
])
def test_bad_tags_and_files_say_why_and_the_picture_still_comes(ctx, pipe, lora_dir, tag, expected):
    save_file({"lora_unet_x.lora_down.weight": torch.full((2, 4), float("nan")),
               "lora_unet_x.lora_up.weight": torch.ones(4, 2)}, str(lora_dir / "broken.safetensors"))
    save_file({"model.weight": torch.ones(2)}, str(lora_dir / "notalora.safetensors"))
    (lora_dir.parent.parent / "config.safetensors").write_bytes(b"not read")
    ctx.networks.refresh()
    before = weights(pipe)
    plain = pixels(generate(ctx, "a cat"))
    result = generate(ctx, f"a cat {tag}")
    assert np.array_equal(pixels(result), plain)
    assert any(expected in w for w in result.warnings), result.warnings
    assert_same_weights(weights(pipe), before)
