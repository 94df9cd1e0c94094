"""ControlNet units in real jobs on the tiny checkpoints: weights, windows, modes, several units, img2img, hires.

The ControlNets are tiny random ones written in lllyasviel's single-file
layout and read back through the studio's real loader (tests/fixtures/tiny_controlnets.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline
from PIL import Image, ImageDraw

from backend.control.units import ControlUnit
from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from tests.fixtures.tiny_controlnets import build_tiny_controlnet, write_controlnet

SIZE = 64


def control_picture(shift: int = 0) -> Image.Image:
    """A black picture with white shapes: canny finds edges, 'none' uses it as the map."""
    picture = Image.new("RGB", (SIZE, SIZE), "black")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((8 + shift, 8, 36 + shift, 30), fill="white")
    draw.ellipse((30, 34, 58, 60), fill=(200, 200, 200))
    return picture


@pytest.fixture
def ctx(app_context):
    folder = app_context.root / "models" / "ControlNet"
    write_controlnet(folder / "control_tiny_sd15.safetensors", "sd1", seed=1, layout="ldm")
    write_controlnet(folder / "control_other_sd15.pth", "sd1", seed=2, layout="ldm-noprefix", fmt="pth")
    write_controlnet(folder / "control_tiny_sdxl.safetensors", "sdxl", seed=3, layout="ldm")
    app_context.control.refresh()
    app_context.options.update(live_previews_enable=False)
    return app_context


def txt2img(ctx, units=(), **fields) -> tuple[np.ndarray, object]:
    values = dict(prompt="a red square", steps=4, width=SIZE, height=SIZE, seed=3, sampler_name="Euler",
                  checkpoint="sd1.safetensors", save_images=False, controlnet_units=list(units))
    values.update(fields)
    result = ctx.service.txt2img(Txt2ImgRequest(**values))
    return np.asarray(result.images[0], dtype=np.int16), result


def unit(**fields) -> ControlUnit:
    values = dict(module="none", model="control_tiny_sd15", image=control_picture())
    values.update(fields)
    return ControlUnit(**values)


class UNetCalls:
    """Records, per call of the checkpoint's UNet, its input and whether ControlNet residuals came with it."""

    def __init__(self, unet):
        self.samples, self.controlled = [], []
        self.handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.samples.append((args[0] if args else kwargs["sample"]).clone())
        self.controlled.append(kwargs.get("down_block_additional_residuals") is not None)

    def close(self):
        self.handle.remove()


def test_weight_zero_gives_the_pixels_of_no_unit_and_weight_one_changes_them(ctx):
    plain, _ = txt2img(ctx)
    zero, _ = txt2img(ctx, [unit(weight=0.0)])
    one, result = txt2img(ctx, [unit(weight=1.0)])
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).mean() > 1.0
    assert 'ControlNet 0: "Module: none, Model: control_tiny_sd15 [' in result.infotexts[0]
    assert len(result.control_maps) == 1  # the map used, shown next to the picture


def test_same_seed_same_pixels_and_the_map_matters(ctx):
    first, _ = txt2img(ctx, [unit()])
    again, _ = txt2img(ctx, [unit()])
    moved, _ = txt2img(ctx, [unit(image=control_picture(shift=20))])
    assert np.array_equal(first, again)
    assert np.abs(moved - first).mean() > 0.5


def test_balanced_unit_matches_diffusers_own_controlnet_pipeline(ctx):
    """Our UNet wrapper does what StableDiffusionControlNetPipeline does, on the same weights and noise."""
    ours, _ = txt2img(ctx, [unit()], sampler_name="Euler", prompt="a red square")
    loaded = ctx.manager.load("sd1.safetensors")
    _, controlnet = ctx.control.controlnets.load("control_tiny_sd15")
    bare = StableDiffusionControlNetPipeline(
        vae=loaded.pipe.vae, text_encoder=loaded.pipe.text_encoder, tokenizer=loaded.pipe.tokenizer,
        unet=loaded.pipe.unet, controlnet=controlnet,
        scheduler=EulerDiscreteScheduler.from_config(loaded.pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(3)
    theirs = bare("a red square", image=control_picture(), num_inference_steps=4, guidance_scale=7.0,
                  width=SIZE, height=SIZE, generator=generator, controlnet_conditioning_scale=1.0).images[0]
    assert np.abs(np.asarray(theirs, dtype=np.int16) - ours).max() <= 1


def test_unit_starting_at_half_leaves_the_first_half_untouched(ctx):
    loaded = ctx.manager.load("sd1.safetensors")
    calls = UNetCalls(loaded.pipe.unet)
    try:
        txt2img(ctx, steps=6)
        plain_samples = list(calls.samples)
        calls.samples.clear(), calls.controlled.clear()
        txt2img(ctx, [unit(guidance_start=0.5)], steps=6)
    finally:
        calls.close()
    assert calls.controlled == [False] * 3 + [True] * 3
    for ours, plain in zip(calls.samples[:4], plain_samples[:4]):  # the 4th call's input is the 3rd step's output
        assert torch.equal(ours, plain)
    assert not torch.equal(calls.samples[4], plain_samples[4])


def test_two_units_run_together(ctx):
    plain, _ = txt2img(ctx)
    a, _ = txt2img(ctx, [unit()])
    b, _ = txt2img(ctx, [unit(model="control_other_sd15", image=control_picture(shift=20))])
    both, result = txt2img(ctx, [unit(), unit(model="control_other_sd15", image=control_picture(shift=20))])
    assert np.abs(both - a).mean() > 0.5 and np.abs(both - b).mean() > 0.5 and np.abs(both - plain).mean() > 0.5
    assert "ControlNet 0:" in result.infotexts[0] and "ControlNet 1:" in result.infotexts[0]
    assert len(result.control_maps) == 2


def test_control_modes_differ(ctx):
    pictures = {mode: txt2img(ctx, [unit(control_mode=mode)])[0]
                for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")}
    balanced, prompt, control = pictures.values()
    assert np.abs(balanced - prompt).mean() > 0.5
    assert np.abs(balanced - control).mean() > 0.5


def test_canny_unit_uses_the_detected_map(ctx):
    _, result = txt2img(ctx, [unit(module="canny", processor_res=64, threshold_a=50, threshold_b=100)])
    [detected] = result.control_maps
    values = set(np.unique(np.asarray(detected)))
    assert values <= {0, 255} and values == {0, 255}  # a binary edge map, with edges
    assert "Module: canny" in result.infotexts[0] and "Processor Res: 64" in result.infotexts[0]


def test_family_mismatch_is_refused_before_any_step(ctx):
    loaded = ctx.manager.load("sd1.safetensors")
    calls = UNetCalls(loaded.pipe.unet)
    try:
        with pytest.raises(ValueError, match="SDXL.*SD1.x|SD1.x.*SDXL"):
            txt2img(ctx, [unit(model="control_tiny_sdxl")])
    finally:
        calls.close()
    assert calls.samples == []
    txt2img(ctx, [unit()])  # and the studio goes on


def test_enabled_unit_without_image_in_txt2img_is_refused(ctx):
    with pytest.raises(ValueError, match="no image"):
        txt2img(ctx, [unit(image=None)])


def test_disabled_units_and_units_without_model_are_a_plain_job(ctx):
    plain, _ = txt2img(ctx)
    skipped, result = txt2img(ctx, [unit(enabled=False), unit(model="None")])
    assert np.array_equal(skipped, plain)
    assert "ControlNet" not in result.infotexts[0] and not result.control_maps


def test_unknown_names_are_refused_naming_them(ctx):
    with pytest.raises(ValueError, match="no_such_net"):
        txt2img(ctx, [unit(model="no_such_net")])
    with pytest.raises(ValueError, match="no_such_module"):
        txt2img(ctx, [unit(module="no_such_module")])


def test_second_job_reads_no_file(ctx):
    first, _ = txt2img(ctx, [unit()])
    store = ctx.control.controlnets
    reads = store.load_count
    path = store.find("control_tiny_sd15").path
    path.rename(path.with_suffix(".moved"))  # a second read would fail now
    again, _ = txt2img(ctx, [unit()])
    assert store.load_count == reads and np.array_equal(again, first)


def test_hires_fix_keeps_the_units(ctx):
    loaded = ctx.manager.load("sd1.safetensors")
    calls = UNetCalls(loaded.pipe.unet)
    try:
        _, result = txt2img(ctx, [unit()], hires={"enabled": True, "upscaler": "Latent", "upscale_by": 2.0,
                                                  "steps": 4, "denoising_strength": 0.5})
    finally:
        calls.close()
    assert result.images[0].size == (2 * SIZE, 2 * SIZE)
    second_pass = [c for c, s in zip(calls.controlled, calls.samples) if s.shape[-1] == 2 * SIZE // 8]
    assert second_pass and all(second_pass)


def img2img(ctx, units=(), **fields):
    values = dict(prompt="a red square", steps=4, width=SIZE, height=SIZE, seed=3, sampler_name="Euler",
                  checkpoint="sd1.safetensors", save_images=False, init_images=[control_picture(shift=10)],
                  denoising_strength=0.8, controlnet_units=list(units))
    values.update(fields)
    result = ctx.service.img2img(Img2ImgRequest(**values))
    return np.asarray(result.images[0], dtype=np.int16), result


def test_img2img_unit_without_image_uses_the_img2img_picture(ctx):
    plain, _ = img2img(ctx)
    own_image, _ = img2img(ctx, [unit(image=control_picture(shift=10))])
    from_init, result = img2img(ctx, [unit(image=None)])
    assert np.abs(from_init - plain).mean() > 0.5
    assert np.array_equal(from_init, own_image)  # the same picture, taken from the img2img input
    assert np.array_equal(np.asarray(result.control_maps[0]), np.asarray(control_picture(shift=10)))


def test_inpaint_with_a_unit_keeps_unmasked_pixels(ctx):
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 31), fill=255)
    picture = control_picture(shift=10)
    out, _ = img2img(ctx, [unit()], mask=mask, mask_blur=0, init_images=[picture])
    original = np.asarray(picture, dtype=np.int16)
    assert np.array_equal(out[40:, 40:], original[40:, 40:])
    assert np.abs(out[:24, :24] - original[:24, :24]).mean() > 1.0


def test_sdxl_checkpoint_with_an_sdxl_controlnet(ctx):
    plain, _ = txt2img(ctx, checkpoint="sdxl.safetensors")
    controlled, _ = txt2img(ctx, [unit(model="control_tiny_sdxl")], checkpoint="sdxl.safetensors")
    zero, _ = txt2img(ctx, [unit(model="control_tiny_sdxl", weight=0)], checkpoint="sdxl.safetensors")
    assert np.abs(controlled - plain).mean() > 0.5
    assert np.array_equal(zero, plain)


def test_the_tiny_controlnet_fixture_really_controls():
    """Guards the fixture: its zero convolutions are filled, so residuals are not zero."""
    controlnet = build_tiny_controlnet("sd1", 1)
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0


def test_maps_are_saved_only_when_asked(ctx):
    folder = ctx.root / "outputs" / "detected_maps"
    ctx.service.txt2img(Txt2ImgRequest(prompt="a", steps=2, width=SIZE, height=SIZE, seed=1, controlnet_units=[unit()],
                                       checkpoint="sd1.safetensors"))
    assert not folder.exists() or not list(folder.rglob("*.png"))
    ctx.options.update(control_net_detectmap_autosaving=True)
    ctx.service.txt2img(Txt2ImgRequest(prompt="a", steps=2, width=SIZE, height=SIZE, seed=1, controlnet_units=[unit()],
                                       checkpoint="sd1.safetensors"))
    [saved] = list(folder.rglob("*.png"))
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(control_picture()))


def test_only_masked_inpaint_reads_the_crop_around_the_mask(ctx):
    big = control_picture().resize((128, 128), Image.Resampling.NEAREST)
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((70, 70, 100, 100), fill=255)
    _, result = img2img(ctx, [unit(image=None)], init_images=[big], mask=mask, inpaint_full_res=True,
                        inpaint_full_res_padding=8, mask_blur=0)
    [detected] = result.control_maps
    assert detected.size == (SIZE, SIZE)  # the crop, at the processing size
    assert not np.array_equal(np.asarray(detected), np.asarray(big.resize((SIZE, SIZE))))
    assert result.images[0].size == (128, 128)


def test_a_map_of_another_aspect_follows_the_resize_mode(ctx):
    wide = control_picture().resize((96, 48))
    pictures = [txt2img(ctx, [unit(image=wide, resize_mode=mode)])[0]
                for mode in ("Just Resize", "Crop and Resize", "Resize and Fill")]
    assert np.abs(pictures[0] - pictures[1]).mean() > 0.3 and np.abs(pictures[1] - pictures[2]).mean() > 0.3


@pytest.mark.parametrize("option, first, second", [("Both", True, True), ("Low res only", True, False),
                                                   ("High res only", False, True)])
def test_hires_fix_option_picks_the_passes(ctx, option, first, second):
    loaded = ctx.manager.load("sd1.safetensors")
    calls = UNetCalls(loaded.pipe.unet)
    try:
        _, result = txt2img(ctx, [unit(hr_option=option)], hires={"enabled": True, "upscaler": "Latent",
                                                                  "upscale_by": 2.0, "steps": 2,
                                                                  "denoising_strength": 0.5})
    finally:
        calls.close()
    low = [c for c, s in zip(calls.controlled, calls.samples) if s.shape[-1] == SIZE // 8]
    high = [c for c, s in zip(calls.controlled, calls.samples) if s.shape[-1] == 2 * SIZE // 8]
    assert set(low) == {first} and set(high) == {second}
    assert ("Hr Option" in result.infotexts[0]) == (option != "Both")


def test_composes_with_a_lora_and_prompt_editing(ctx):
    from tests.fixtures.tiny_networks import write_kohya_lora

    loaded = ctx.manager.load("sd1.safetensors")
    write_kohya_lora(loaded.pipe, ctx.root / "models" / "Lora" / "ink.safetensors", seed=4)
    ctx.networks.refresh()
    plain, _ = txt2img(ctx)
    with_unit, _ = txt2img(ctx, [unit()])
    both, result = txt2img(ctx, [unit()], prompt="a red square <lora:ink:1>")
    assert np.abs(both - with_unit).mean() > 0.5 and "Lora hashes" in result.infotexts[0]
    # Prompt editing: the ControlNet sees the texts of each step, as the UNet does.
    _, controlnet = ctx.control.controlnets.load("control_tiny_sd15")
    seen = []
    handle = controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        txt2img(ctx, [unit()], prompt="[a red square:a blue circle:0.5]")
    finally:
        handle.remove()
    switches = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert len(seen) == 4 and sum(switches) == 1  # one text, then the other, as the schedule says
    assert np.array_equal(txt2img(ctx)[0], plain)  # LoRA off and no unit: the plain job again


def test_a_batch_gets_the_unit_on_every_image(ctx):
    batch, result = txt2img(ctx, [unit()], batch_size=2)
    plain = ctx.service.txt2img(Txt2ImgRequest(prompt="a red square", steps=4, width=SIZE, height=SIZE, seed=3,
                                               sampler_name="Euler", checkpoint="sd1.safetensors",
                                               save_images=False, batch_size=2))
    for controlled, uncontrolled in zip(result.images, plain.images):
        assert np.abs(np.asarray(controlled, dtype=np.int16) - np.asarray(uncontrolled, dtype=np.int16)).mean() > 0.5
    single, _ = txt2img(ctx, [unit()], seed=4)  # image 2 of the batch has seed 4
    assert np.abs(np.asarray(result.images[1], dtype=np.int16) - single).max() <= 2
