"""The demo model's training script, at a tiny recipe: --vae-from must replay the VAE stage (the same
VAE, to the file's float16, and the same scene draws after it), and refuse a VAE of another recipe."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from backend.demo_model import train

TINY = train.Recipe(vae_steps=2, vae_batch=2, scenes=8, unet_steps=2, unet_batch=2, vae_min_colour=0,
                    vae_min_shape=0)


@pytest.fixture(scope="module")
def vae_stage_file(tmp_path_factory):
    """(path, VAE, the random stream after stage 3) of a full run's VAE stage, saved as the script saves."""
    torch.manual_seed(TINY.seed)
    rng = random.Random(TINY.seed)
    vae, _ = train.vae_stage(TINY, rng, started=0.0)
    path = tmp_path_factory.mktemp("demo") / "earlier.safetensors"
    train.save(path, UNet2DConditionModel(**train.unet_config(TINY)), vae, CLIPTextModel(CLIPTextConfig(**train.TEXT_CONFIG)),
               train.model_card(TINY, 0.0), TINY)
    return path, vae, rng.getstate()


def test_reusing_a_vae_replays_the_vae_stage(vae_stage_file):
    path, vae, rng_after = vae_stage_file
    rng = random.Random(TINY.seed)
    reused, _ = train.reused_vae_stage(TINY, rng, path)
    assert rng.getstate() == rng_after  # the UNet's scenes and captions are the full run's
    trained = vae.state_dict()
    assert reused.state_dict().keys() == trained.keys()
    for key, value in reused.state_dict().items():
        assert torch.equal(value, trained[key].to(torch.float16).float()), key


def test_a_vae_of_another_recipe_is_refused(vae_stage_file, tmp_path):
    path, _, _ = vae_stage_file
    with pytest.raises(SystemExit, match="vae_steps"):
        train.run(replace(TINY, vae_steps=3), tmp_path / "x.safetensors", vae_from=path)
    assert not (tmp_path / "x.safetensors").exists()


def test_the_unet_stage_on_a_reused_vae_repeats_itself_and_its_own_seed_changes_it(vae_stage_file, tmp_path):
    path, _, _ = vae_stage_file

    def unet_of(recipe, name):
        train.run(recipe, tmp_path / name, vae_from=path)
        with safe_open(str(tmp_path / name), "pt") as f:
            card = f.metadata()
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}, card

    first, card = unet_of(TINY, "a.safetensors")
    again, _ = unet_of(TINY, "b.safetensors")
    reseeded, reseeded_card = unet_of(replace(TINY, unet_seed=7), "c.safetensors")
    offset, offset_card = unet_of(replace(TINY, noise_offset=0.1), "d.safetensors")
    assert card["studio.vae_from"] == "earlier.safetensors"
    assert card["studio.training_device"] == "cpu"
    assert all(first[k].equal(again[k]) for k in first)
    assert not all(first[k].equal(reseeded[k]) for k in first)
    assert '"unet_seed": 7' in reseeded_card["studio.recipe"]
    assert not all(first[k].equal(offset[k]) for k in first)  # the offset reaches the training noise
    assert '"noise_offset": 0.1' in offset_card["studio.recipe"]


def test_settings_change_one_field_each_as_its_own_type_and_a_wider_unet_is_saved_and_described():
    recipe = train.with_settings(TINY, ["unet_channels=[32,64,64]", "noise_offset=0.05", "unet_steps=3",
                                        "caption_keep=[[\"colour\", 1.0]]", "unet_seed=4"])
    assert recipe == replace(TINY, unet_channels=(32, 64, 64), noise_offset=0.05, unet_steps=3,
                             caption_keep=(("colour", 1.0),), unet_seed=4)
    assert train.unet_config(recipe)["block_out_channels"] == (32, 64, 64)
    assert json.loads(train.model_card(recipe, 0.0)["studio.architecture"])["unet"]["block_out_channels"] == [32, 64, 64]
    with pytest.raises(SystemExit, match="unet_chanels.*unet_channels"):
        train.with_settings(TINY, ["unet_chanels=[1,2,3]"])
    with pytest.raises(SystemExit, match="unet_steps"):
        train.with_settings(TINY, ["unet_steps=many"])
    with pytest.raises(SystemExit, match="takes a list"):
        train.with_settings(TINY, ["unet_channels=128"])
    assert train.with_settings(TINY, ["zero_terminal_snr=true"]).zero_terminal_snr
    assert not train.with_settings(TINY, ["zero_terminal_snr=False"]).zero_terminal_snr
    with pytest.raises(SystemExit, match="true or false"):
        train.with_settings(TINY, ["zero_terminal_snr=yes"])


def test_a_zero_terminal_snr_run_learns_v_from_pure_noise_and_loads_as_such_a_file(vae_stage_file, tmp_path):
    from diffusers import DDPMScheduler

    from backend.devices import DeviceSettings
    from backend.models.loader import scheduler_config
    from backend.models.manager import ModelManager

    recipe = replace(TINY, zero_terminal_snr=True)
    alphas = DDPMScheduler.from_config(train.training_schedule(recipe)).alphas_cumprod
    assert alphas[-1] == 0  # the last step holds nothing of the picture
    x0, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    target, weight = train.prediction_target(recipe, x0, noise, alphas[[999, 0]].view(-1, 1, 1, 1))
    assert torch.equal(target[0], -x0[0]) and weight[0].item() == 1.0  # the prompt alone must say what to draw
    assert weight[1].item() < 0.01  # min-SNR: the nearly clean step weighs little

    path, _, _ = vae_stage_file
    train.run(recipe, tmp_path / "v.safetensors", vae_from=path)
    loaded = ModelManager([], DeviceSettings.from_flags(device="cpu", precision="full"), builtin=[tmp_path / "v.safetensors"]).load(
        "v.safetensors")
    assert loaded.variant.prediction_type == "v_prediction" and loaded.variant.zero_terminal_snr
    sampling = DDPMScheduler.from_config(scheduler_config(loaded.variant))
    assert torch.equal(sampling.alphas_cumprod, alphas)  # the studio samples on the schedule it was trained on


def test_the_text_encoder_stops_after_its_own_steps_while_the_unet_trains_on(vae_stage_file, tmp_path):
    path, _, _ = vae_stage_file

    def weights_of(recipe, name):
        train.run(recipe, tmp_path / name, vae_from=path)
        with safe_open(str(tmp_path / name), "pt") as f:
            split = {"unet": "model.diffusion_model.", "text": "cond_stage_model."}
            return {part: {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)} for part, prefix in split.items()}

    one_step = weights_of(replace(TINY, unet_steps=1, text_encoder_steps=1), "one.safetensors")
    longer = weights_of(replace(TINY, unet_steps=3, text_encoder_steps=1), "longer.safetensors")
    along = weights_of(replace(TINY, unet_steps=3), "along.safetensors")
    assert all(longer["text"][k].equal(one_step["text"][k]) for k in one_step["text"])  # frozen after step 1
    assert not all(longer["unet"][k].equal(one_step["unet"][k]) for k in one_step["unet"])  # the UNet went on
    assert not all(along["text"][k].equal(longer["text"][k]) for k in along["text"])  # by default it trains along


def test_fast_kernels_train_in_bfloat16_and_still_repeat_themselves(vae_stage_file, tmp_path):
    path, _, _ = vae_stage_file
    fast, plain = replace(TINY, fast_kernels=True), replace(TINY, fast_kernels=False)
    loss = train.vae_loss(train.AutoencoderKL(**train.VAE_CONFIG), [train.random_scene(random.Random(1))], 32, fast)
    assert loss.dtype == torch.float32 and loss.requires_grad  # autocast inside, a float32 loss outside

    def unet_of(recipe, name):
        train.run(recipe, tmp_path / name, vae_from=path)
        with safe_open(str(tmp_path / name), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}

    first, again = unet_of(fast, "a.safetensors"), unet_of(fast, "b.safetensors")
    assert all(first[k].equal(again[k]) for k in first)  # same seed, same file

    def trained_unet(recipe):  # the UNet stage alone: a VAE of the other setting would be refused
        rng = random.Random(0)
        scenes = [train.random_scene(rng) for _ in range(4)]
        latents, cells = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.ones(4, 1, 16, 16)
        return train.train_unet(recipe, latents, cells, scenes, started=0.0)[0].state_dict()

    bf16, fp32 = trained_unet(fast), trained_unet(plain)
    assert not all(bf16[k].equal(fp32[k]) for k in bf16)  # the bfloat16 passes are really used


def test_tag_captions_name_the_same_attributes_as_tags():
    scene = train.Scene(shape="star", colour="red", background="blue", position="top left", size="small")
    assert scene.tags() == "red, star, small, top left, blue background"
    assert scene.tags(shape=False, size=False, position=False, background=False) == "red"  # a negative prompt's word
    scenes = [scene] * 8
    index = torch.arange(8)

    def captions(recipe):
        sampler = train.CaptionSampler(scenes, recipe)
        gen = torch.Generator().manual_seed(0)
        ids = sampler(index, gen)
        decoded = [sampler.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return [text.replace(" ,", ",") for text in decoded], gen.get_state()  # the decoder spaces commas

    keep_all = (("colour", 1.0), ("shape", 1.0), ("size", 1.0), ("position", 1.0), ("background", 1.0))
    as_tags, _ = captions(replace(TINY, caption_keep=keep_all, caption_dropout=0.0, tag_captions=1.0))
    as_sentences, stream = captions(replace(TINY, caption_keep=keep_all, caption_dropout=0.0, tag_captions=0.0))
    assert set(as_tags) == {"red, star, small, top left, blue background"}
    assert set(as_sentences) == {"a small red star at the top left on a blue background"}
    # Without tag captions no extra random numbers are drawn, so older recipes keep their captions and noise.
    reference = torch.Generator().manual_seed(0)
    torch.rand(8, 5, generator=reference), torch.rand(8, generator=reference)
    assert torch.equal(stream, reference.get_state())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal a machine without a GPU gives")
def test_without_a_gpu_auto_trains_on_the_cpu_and_asking_for_cuda_says_why_not():
    assert train.training_device("auto") == torch.device("cpu")
    assert train.training_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        train.training_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_run_trains_there_repeats_its_draws_and_saves_a_cpu_file(vae_stage_file, tmp_path):
    path, _, _ = vae_stage_file
    gpu = train.training_device("auto")
    assert gpu.type == "cuda"
    train.run(TINY, tmp_path / "gpu.safetensors", vae_from=path, device=gpu)
    train.run(TINY, tmp_path / "cpu.safetensors", vae_from=path)
    with safe_open(str(tmp_path / "gpu.safetensors"), "pt") as on_gpu, \
            safe_open(str(tmp_path / "cpu.safetensors"), "pt") as on_cpu:
        assert on_gpu.metadata()["studio.training_device"].startswith("cuda (")
        assert on_gpu.keys() == on_cpu.keys()
        unet = [k for k in on_gpu.keys() if k.startswith("model.diffusion_model.")]
        assert all(torch.isfinite(on_gpu.get_tensor(k)).all() for k in unet)
        # The same initial weights, batches and noise: two steps apart only by the devices' arithmetic.
        assert all(torch.allclose(on_gpu.get_tensor(k).float(), on_cpu.get_tensor(k).float(), atol=1e-2)
                   for k in unet)


def test_a_run_scores_its_file_and_names_the_goals_it_misses(vae_stage_file, tmp_path, capsys):
    path, _, _ = vae_stage_file
    train.run(TINY, tmp_path / "scored.safetensors", vae_from=path, evaluate_steps=2)
    printed = capsys.readouterr().out
    assert "colour adherence  CFG 7:" in printed and "'a circle', 48 seeds" in printed
    assert "goals missed: colour" in printed  # two training steps draw no held-out colour right


def test_a_report_names_each_missed_goal_with_its_number():
    from backend.demo_model.evaluate import Report, Scores

    negative = {"seeds": 48, "red_family_without": 13, "red_family_with_negative": 0}
    good = Report(at7=Scores(colour=0.95, shape=0.8, count=24), at1=Scores(colour=0.8, shape=0.7, count=24),
                  negative=negative)
    assert good.shortfalls() == []
    poor = Report(at7=Scores(colour=0.86, shape=0.54, count=24), at1=Scores(colour=0.83, shape=0.74, count=24),
                  negative=negative | {"red_family_with_negative": 13})
    assert poor.shortfalls() == ["colour 86% < 90%", "shape 54% < 70%", "CFG 7 only -8 points over CFG 1 (goal +10)",
                                 "negative 'red' does not lessen red's family (13 -> 13)"]
