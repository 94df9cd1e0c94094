"""Prompts become conditioning the way A1111 makes it: weights, chunks, editing, embeddings, clip skip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.app_context import DEMO_CHECKPOINT
from backend.devices import DeviceSettings
from backend.generation.request import Txt2ImgRequest
from backend.models.manager import ModelManager
from backend.networks.embeddings import EmbeddingStore
from backend.prompts.conditioning import PromptEncoder
from tests.fixtures.tiny_networks import write_embedding

SD1 = "sd1.safetensors"
CPU = DeviceSettings(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
def pipe(app_context):
    return app_context.manager.load(SD1).pipe


def generate(ctx, prompt: str, checkpoint: str = SD1, **fields):
    request = Txt2ImgRequest(prompt=prompt, width=64, height=64, seed=11, save_images=False,
                             checkpoint=checkpoint, **{"steps": 2, **fields})
    return ctx.service.txt2img(request)


@pytest.mark.parametrize("checkpoint", [SD1, "sd2-v.safetensors", "sdxl.safetensors"])
def test_plain_prompts_encode_exactly_as_diffusers_does(app_context, checkpoint):
    pipe = app_context.manager.load(checkpoint).pipe
    ours = PromptEncoder(pipe).encode("a red star, on a blue background")
    if checkpoint.startswith("sdxl"):
        embeds, _, pooled, _ = pipe.encode_prompt("a red star, on a blue background", device="cpu",
                                                  do_classifier_free_guidance=False)
        assert torch.equal(ours.pooled, pooled)
    else:
        embeds, _ = pipe.encode_prompt("a red star, on a blue background", "cpu", 1, False)
    assert torch.equal(ours.embeds, embeds)


def test_weight_one_equals_no_weight_and_other_weights_change_only_their_tokens():
    # The demo model's text encoder was trained, so its outputs have a mean worth restoring.
    pipe = ModelManager([DEMO_CHECKPOINT.parent], CPU).load(DEMO_CHECKPOINT.name).pipe
    encoder = PromptEncoder(pipe)
    plain = encoder.encode("a red star").embeds
    assert torch.equal(encoder.encode("a (red:1.0) star").embeds, plain)
    heavy = encoder.encode("a (red:1.5) star").embeds
    ratio = heavy / plain
    red = 2  # <start> a red star
    others = torch.cat([ratio[0, :red], ratio[0, red + 1:]])
    # every vector is scaled by one common factor (the mean restored), and "red" by 1.5 more
    torch.testing.assert_close(others, torch.full_like(others, others[0, 0].item()), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ratio[0, red], torch.full_like(ratio[0, red], 1.5 * others[0, 0].item()),
                               rtol=1e-3, atol=1e-3)
    assert others[0, 0] != 1
    torch.testing.assert_close(heavy.mean(), plain.mean(), rtol=1e-4, atol=1e-6)


def test_emphasis_on_an_encoder_with_centred_outputs_scales_only_its_tokens(pipe):
    # The tiny test encoder's final LayerNorm has no bias, so its outputs' mean is rounding noise:
    # restoring it used to flip every vector's sign or overflow to inf.
    encoder = PromptEncoder(pipe)
    plain = encoder.encode("a red star").embeds
    for weight in (0.5, 1.5):
        weighted = encoder.encode(f"a (red:{weight}) star").embeds
        assert torch.isfinite(weighted).all()
        torch.testing.assert_close(weighted[0, 2], plain[0, 2] * weight)
        assert torch.equal(weighted[0, 3:], plain[0, 3:]) and torch.equal(weighted[0, :2], plain[0, :2])


def test_long_prompts_become_chunks_and_their_last_chunk_matters(app_context, pipe):
    encoder = PromptEncoder(pipe)
    words = " ".join(f"word{i % 40}" for i in range(195))
    long_a, long_b = words + " red", words + " blue"
    cond = encoder.encode(long_a)
    assert cond.chunks >= 3  # never truncated at 77 tokens
    assert torch.equal(cond.embeds[:, :77], encoder.encode(long_b).embeds[:, :77])
    assert not torch.equal(cond.embeds[:, -77:], encoder.encode(long_b).embeds[:, -77:])
    a = np.asarray(generate(app_context, long_a).images[0])
    b = np.asarray(generate(app_context, long_b).images[0])
    assert not np.array_equal(a, b)


def test_break_starts_a_new_chunk(pipe):
    encoder = PromptEncoder(pipe)
    assert encoder.encode("a cat BREAK a hat").chunks == 2
    assert torch.equal(encoder.encode("a cat BREAK a hat").embeds[:, 77:], encoder.encode("a hat").embeds)




def _unet_conditioning(pipe):
    """Records the encoder_hidden_states the UNet sees on each call."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    return seen, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_a_short_prompt_is_padded_with_the_empty_chunk_to_the_negative_prompt_length(app_context, pipe):
    encoder = PromptEncoder(pipe)
    long_negative = " ".join(["blurry"] * 120)
    seen, handle = _unet_conditioning(pipe)
    try:
        generate(app_context, "a cat", negative_prompt=long_negative, steps=1)
    finally:
        handle.remove()
    negative, positive = seen[0][:1], seen[0][1:]
    assert torch.equal(negative, encoder.encode(long_negative).embeds)  # two chunks, as written
    expected = torch.cat([encoder.encode("a cat").embeds, encoder.encode("").embeds], dim=1)
    assert torch.equal(positive, expected)  # A1111's padding: the empty prompt's chunk


def test_prompt_editing_switches_at_the_named_step(app_context, pipe):
    encoder = PromptEncoder(pipe)
    dog, cat = encoder.encode("a dog").embeds, encoder.encode("a cat").embeds
    seen, handle = _unet_conditioning(pipe)
    try:
        generate(app_context, "a [dog:cat:2]", steps=6, cfg_scale=1.0)
    finally:
        handle.remove()
    used = ["dog" if torch.equal(s, dog) else "cat" if torch.equal(s, cat) else "?" for s in seen]
    assert used == ["dog", "dog", "dog", "cat", "cat", "cat"]  # steps 0..2 as A1111: step <= 2


def test_alternation_changes_every_step_with_cfg(app_context, pipe):
    encoder = PromptEncoder(pipe)
    a, b, empty = encoder.encode("a"), encoder.encode("b"), encoder.encode("")
    seen, handle = _unet_conditioning(pipe)
    try:
        generate(app_context, "[a|b]", steps=4, cfg_scale=7.0)
    finally:
        handle.remove()
    positives = [s[1:] for s in seen]  # the pipeline runs [negative, positive]
    assert all(torch.equal(s[:1], empty.embeds) for s in seen)
    # A1111's own order: step i uses the first schedule entry with i <= its end step, and [a|b] over
    # 4 steps is [(1, a), (2, b), (3, a), (4, b)], so steps 0..3 see a, a, b, a.
    assert [torch.equal(p, a.embeds) for p in positives] == [True, True, False, True]
    assert [torch.equal(p, b.embeds) for p in positives] == [False, False, True, False]


def test_clip_skip_uses_an_earlier_layer(pipe):
    last = PromptEncoder(pipe, clip_skip=1).encode("a cat").embeds
    skipped = PromptEncoder(pipe, clip_skip=2).encode("a cat").embeds
    hidden = pipe.text_encoder(pipe.tokenizer("a cat", padding="max_length", max_length=77,
                                              return_tensors="pt").input_ids, output_hidden_states=True)
    assert torch.equal(skipped, pipe.text_encoder.final_layer_norm(hidden.hidden_states[-2]))
    assert not torch.equal(last, skipped)


# --- textual inversion -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["pt", "safetensors", "bin"])
def test_an_embedding_name_in_the_prompt_puts_its_vectors_into_the_text_encoder(tmp_path, pipe, suffix):
    width = pipe.text_encoder.config.hidden_size
    vectors = write_embedding(tmp_path / f"shiny-style.{suffix}", width, vectors=3, seed=2)
    encoder = PromptEncoder(pipe, embeddings=EmbeddingStore([tmp_path]))
    seen = []  # what the first transformer layer receives: token + position embeddings
    layer = pipe.text_encoder.encoder.layers[0]
    handle = layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None).clone()), with_kwargs=True)
    try:
        cond = encoder.encode("a shiny-style cat")
    finally:
        handle.remove()
    assert cond.embeddings_used == ["shiny-style"]
    tokens = seen[-1][0] - pipe.text_encoder.embeddings.position_embedding.weight
    # start token, "a", then the three vectors, then "cat"
    torch.testing.assert_close(tokens[2:5], vectors)
    assert not torch.equal(cond.embeds, PromptEncoder(pipe).encode("a shiny-style cat").embeds)


def test_embeddings_used_are_recorded_in_the_infotext(app_context, pipe):
    folder = app_context.networks.embeddings.folders[0]
    write_embedding(folder / "glow.safetensors", pipe.text_encoder.config.hidden_size, seed=3)
    app_context.networks.refresh()
    infotext = generate(app_context, "a glow cat").infotexts[0]
    assert 'TI hashes: "glow: ' in infotext


def test_an_embedding_of_the_wrong_width_is_listed_as_skipped_and_stays_text(tmp_path, pipe):
    write_embedding(tmp_path / "wide.pt", pipe.text_encoder.config.hidden_size + 8, seed=4)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not a pickle")
    store = EmbeddingStore([tmp_path])
    assert [s.name for s in store.unreadable()] == ["junk"]
    encoder = PromptEncoder(pipe, embeddings=store)
    assert [(s.name, "width" in s.reason) for s in encoder.skipped] == [("wide", True)]
    assert torch.equal(encoder.encode("a wide cat").embeds, PromptEncoder(pipe).encode("a wide cat").embeds)


def test_an_sdxl_embedding_gives_each_text_encoder_its_own_vectors(app_context, tmp_path):
    from safetensors.torch import save_file

    pipe = app_context.manager.load("sdxl.safetensors").pipe
    widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    vectors = {"clip_l": torch.randn(2, widths[0]), "clip_g": torch.randn(2, widths[1])}
    save_file(vectors, str(tmp_path / "xl-style.safetensors"))
    write_embedding(tmp_path / "sd1-only.pt", widths[0])  # one set of vectors: for SD1, skipped here
    encoder = PromptEncoder(pipe, embeddings=EmbeddingStore([tmp_path]))
    assert [s.name for s in encoder.skipped] == ["sd1-only"]
    cond = encoder.encode("a xl-style cat")
    plain = PromptEncoder(pipe).encode("a xl-style cat")
    assert cond.embeddings_used == ["xl-style"]
    # both halves of the joined features change: each encoder got its own vectors
    assert not torch.equal(cond.embeds[..., :widths[0]], plain.embeds[..., :widths[0]])
    assert not torch.equal(cond.embeds[..., widths[0]:], plain.embeds[..., widths[0]:])
