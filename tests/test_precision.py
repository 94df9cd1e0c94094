"""Precision per device: bf16 on CPUs that compute it natively (UNet, text encoders and VAE; --no-half-vae
keeps the VAE fp32), fp32 elsewhere, A1111's flags; every kind of job runs all-bf16 and with a bf16 UNet
beside an fp32 VAE, close to fp32;
a LoRA taken off restores the bf16 weights bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backend.app_context import AppPaths, build_app_context
from backend.control.units import ControlUnit
from backend.devices import DeviceSettings, cpu_has_native_bf16
from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from tests.fixtures.tiny_controlnets import write_controlnet
from tests.fixtures.tiny_ip_adapters import write_adapter, write_encoder_folder
from tests.fixtures.tiny_networks import write_kohya_lora
from tests.test_controlnet_generation import control_picture

FLAGS_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
FLAGS_WITH_AMX = "flags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n"
FLAGS_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
JOB = dict(prompt="a red ball", width=64, height=64, steps=3, seed=5, save_images=False,
           checkpoint="sd1.safetensors")


def test_the_cpu_probe_reads_the_feature_flags():
    assert cpu_has_native_bf16(FLAGS_WITH_BF16) and cpu_has_native_bf16(FLAGS_WITH_AMX)
    assert not cpu_has_native_bf16(FLAGS_WITHOUT) and not cpu_has_native_bf16("")
    with open("/proc/cpuinfo") as handle:  # the real probe on this machine agrees with its flags
        flags = next(line for line in handle if line.startswith("flags")).split()
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


@pytest.mark.parametrize(("flags", "unet", "vae"), [
    ({}, torch.bfloat16, torch.bfloat16),
    ({"precision": "full"}, torch.float32, torch.float32),
    ({"no_half": True}, torch.float32, torch.float32),
    ({"precision": "autocast"}, torch.bfloat16, torch.bfloat16),
    ({"precision": "half"}, torch.bfloat16, torch.bfloat16),
    ({"precision": "bf16"}, torch.bfloat16, torch.bfloat16),
    ({"no_half_vae": True}, torch.bfloat16, torch.float32),
])
def test_cpu_precision_with_native_bf16(flags, unet, vae):
    device = DeviceSettings.from_flags(device="cpu", native_bf16=lambda: True, **flags)
    assert (device.dtype, device.text_encoder, device.vae) == (unet, unet, vae)


def test_cpu_precision_without_native_bf16_is_fp32_unless_asked():
    assert DeviceSettings.from_flags(device="cpu", native_bf16=lambda: False).dtype == torch.float32
    assert DeviceSettings.from_flags(device="cpu", precision="bf16", native_bf16=lambda: False).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--precision must be one of"):
        DeviceSettings.from_flags(device="cpu", precision="quarter")


def test_accelerators_run_fp16_and_no_half_vae_keeps_the_vae_fp32():
    cuda = DeviceSettings.from_flags(device="cuda")
    assert (cuda.dtype, cuda.vae) == (torch.float16, torch.float16)
    assert DeviceSettings.from_flags(device="cuda", no_half_vae=True).vae == torch.float32
    assert DeviceSettings.from_flags(device="cuda", precision="bf16").dtype == torch.bfloat16
    assert DeviceSettings.from_flags(device="cuda", precision="full").dtype == torch.float32
    assert DeviceSettings.from_flags(device="cuda", precision="full").describe()["unet"] == "fp32"


def _context(root, checkpoint_dir, precision: str, unet, **flags):
    # The same ControlNet, IP-Adapter and image encoder files in both studios.
    write_controlnet(root / "models" / "ControlNet" / "control_tiny_sd15.safetensors", "sd1", seed=1)
    write_adapter(root / "models" / "ipadapter" / "ip-adapter_tiny_sd15.bin", unet, "plain", seed=0)
    write_encoder_folder(root / "models" / "clip_vision" / "tiny-vit")
    device = DeviceSettings.from_flags(device="cpu", precision=precision, native_bf16=lambda: True, **flags)
    return build_app_context(AppPaths(root=root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]), device)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory, checkpoint_dir):
    from backend.models.loader import load_single_file

    unet = load_single_file(checkpoint_dir / "sd1.safetensors", DeviceSettings.from_flags(device="cpu",
                                                                                          precision="full"))[0].unet
    return {"full": _context(tmp_path_factory.mktemp("full"), checkpoint_dir, "full", unet),
            "bf16": _context(tmp_path_factory.mktemp("bf16"), checkpoint_dir, "bf16", unet),
            "bf16, fp32 VAE": _context(tmp_path_factory.mktemp("mixed"), checkpoint_dir, "bf16", unet,
                                       no_half_vae=True)}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_the_parts_load_in_their_own_precision(contexts):
    pipe = contexts["bf16"].manager.load("sd1.safetensors").pipe
    assert (pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype) == (torch.bfloat16,) * 3
    for conv in (pipe.unet.conv_in.weight, pipe.vae.decoder.conv_in.weight):  # channels-last in bf16: faster
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    mixed = contexts["bf16, fp32 VAE"].manager.load("sd1.safetensors").pipe
    assert (mixed.unet.dtype, mixed.vae.dtype) == (torch.bfloat16, torch.float32)
    assert mixed.vae.decoder.conv_in.weight.is_contiguous()
    full = contexts["full"].manager.load("sd1.safetensors").pipe
    assert full.unet.conv_in.weight.is_contiguous() and full.vae.decoder.conv_in.weight.is_contiguous()


def _picture() -> Image.Image:
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return Image.fromarray(gradient)


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


# Each kind of job; with the fp32 VAE the pipelines hand it bf16 pictures and latents, which it takes in fp32.
JOBS = {
    "txt2img": lambda: Txt2ImgRequest(**JOB),
    "hires latent": lambda: Txt2ImgRequest(**JOB, hires={"enabled": True, "upscaler": "Latent", "upscale_by": 1.5,
                                                          "denoising_strength": 0.6}),
    "hires pixels": lambda: Txt2ImgRequest(**JOB, hires={"enabled": True, "upscaler": "Lanczos", "upscale_by": 1.5,
                                                          "denoising_strength": 0.6}),
    "inpainting model": lambda: Txt2ImgRequest(**{**JOB, "checkpoint": "sd1-inpainting.safetensors"}),
    "img2img": lambda: Img2ImgRequest(**JOB, init_images=[_picture()], denoising_strength=0.6),
    "inpaint": lambda: Img2ImgRequest(**JOB, init_images=[_picture()], mask=_mask(), denoising_strength=0.8),
    "inpaint, inpainting model": lambda: Img2ImgRequest(**{**JOB, "checkpoint": "sd1-inpainting.safetensors"},
                                                        init_images=[_picture()], mask=_mask()),
    "SDXL": lambda: Txt2ImgRequest(**{**JOB, "checkpoint": "sdxl.safetensors"}),
    "SD2 v": lambda: Txt2ImgRequest(**{**JOB, "checkpoint": "sd2-v.safetensors"}),
    "ControlNet": lambda: Txt2ImgRequest(**JOB, controlnet_units=[ControlUnit(
        module="none", model="control_tiny_sd15", image=control_picture())]),
    "IP-Adapter": lambda: Txt2ImgRequest(**JOB, controlnet_units=[ControlUnit(
        module="ip-adapter_clip_sd15", model="ip-adapter_tiny_sd15", image=_picture())]),
}


@pytest.mark.parametrize("kind", list(JOBS))
def test_every_kind_of_job_runs_in_bf16_close_to_fp32(contexts, kind):
    images = {}
    for precision, ctx in contexts.items():
        request = JOBS[kind]()
        run = ctx.service.img2img if isinstance(request, Img2ImgRequest) else ctx.service.txt2img
        images[precision] = _pixels(run(request).images[0])
    full = images.pop("full")
    for precision, bf16 in images.items():
        assert np.isfinite(bf16).all() and bf16.std() > 1  # a picture, not a flat or NaN one
        difference = np.abs(bf16 - full).mean()
        # bf16 keeps 8 bits of mantissa: a few levels of 255 apart on these random tiny models, not another picture.
        print(f"{kind}, {precision}: vs fp32 mean absolute difference {difference:.2f} of 255")
        assert difference < 6, f"{kind}, {precision}: mean absolute difference {difference:.2f} of 255"
        assert difference < np.abs(full - full[::-1, ::-1]).mean()


def test_a_lora_taken_off_restores_the_bf16_weights_bit_for_bit(contexts):
    ctx = contexts["bf16"]
    pipe = ctx.manager.load("sd1.safetensors").pipe
    folder = ctx.networks.loras.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(pipe, folder / "ink.safetensors", seed=1)
    ctx.networks.refresh()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = _pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0])
    with_lora = _pixels(ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "prompt": "a red ball <lora:ink:1>"})).images[0])
    assert not np.array_equal(with_lora, plain)
    after = _pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0])
    assert np.array_equal(after, plain)
    state = pipe.unet.state_dict()
    assert all(state[k].dtype == torch.bfloat16 and torch.equal(state[k], v) for k, v in before.items()
               if v.is_floating_point())


def test_a_unit_at_weight_zero_gives_the_bf16_pixels_of_no_unit(contexts):
    ctx = contexts["bf16"]
    plain = _pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0])
    for name in ("ControlNet", "IP-Adapter"):
        request = JOBS[name]()
        request.controlnet_units[0].weight = 0.0
        assert np.array_equal(_pixels(ctx.service.txt2img(request).images[0]), plain), name
        assert not np.array_equal(_pixels(ctx.service.txt2img(JOBS[name]()).images[0]), plain), name


def test_settings_and_the_console_say_what_each_part_runs_in(contexts):
    from ui.app import build_ui

    config = build_ui(contexts["bf16"], allow_folders=False).get_config_file()
    shown = next(c["props"]["value"] for c in config["components"]
                 if c.get("props", {}).get("elem_id") == "settings_precision")
    assert ("UNet bf16, text encoders bf16, VAE bf16, channels-last UNet and VAE, UNet compile off (eager) "
            "(bf16 (--precision bf16))") in shown


def test_the_channels_last_layout_changes_no_output_beyond_float_noise(contexts):
    ctx = contexts["bf16"]
    unet = ctx.manager.load("sd1.safetensors").pipe.unet
    channels_last = _pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0])
    unet.to(memory_format=torch.contiguous_format)
    try:
        contiguous = _pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0])
    finally:
        unet.to(memory_format=torch.channels_last)
    other_seed = _pixels(ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "seed": JOB["seed"] + 1})).images[0])
    # Summation order only: on CPUs with native bf16 (AMX) the two layouts take kernels that round apart
    # by about a pixel level on average; another seed's picture is far further away.
    assert np.abs(channels_last - contiguous).mean() < 3.0 < np.abs(channels_last - other_seed).mean()
