"""Benchmark: a ControlNet job against a bare diffusers ControlNet pipeline, side by side in one run.

    python -m tests.bench_controlnet [--width-mult 4] [--steps 20] [--size 256] [--repeats 3] [--device cuda]

Prints, for one fixture checkpoint and a ControlNet made from its UNet (written in
lllyasviel's layout, read back through the studio's loader):
  one unit   our GenerationService with one unit (module none) / a bare StableDiffusionControlNetPipeline
             call on the same components, map, steps and seed
  reload     the first job's ControlNet load (a real file read) and the second job's (the cache: no read)
  two units  our job with two units / our job with one
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from backend.app_context import AppPaths, build_app_context  # noqa: E402
from backend.control.units import ControlUnit  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from backend.generation.request import Txt2ImgRequest  # noqa: E402
from tests.bench_txt2img import median_seconds  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint  # noqa: E402
from tests.fixtures.tiny_controlnets import controlnet_to_ldm  # noqa: E402


def controlnet_for(unet, seed: int) -> ControlNetModel:
    """A ControlNet shaped for `unet`, its zero convolutions filled so it does work."""
    controlnet = ControlNetModel.from_unet(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(conv.weight[0].numel()))
    return controlnet.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width-mult", type=int, default=4, help="UNet width multiplier of the fixture model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    device = DeviceSettings.from_flags(device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-cn-"))
    write_checkpoint(work / "models" / "Stable-diffusion" / "a.safetensors", TinySpec("sd1", width=args.width_mult), 1)
    ctx = build_app_context(AppPaths(root=work, builtin_checkpoints=[]), device)
    ctx.options.update(sd_model_checkpoint="a.safetensors", live_previews_enable=False)
    loaded = ctx.manager.load("a.safetensors")
    folder = work / "models" / "ControlNet"
    folder.mkdir(parents=True)
    for name, seed in (("cn_a", 1), ("cn_b", 2)):
        sd = {k: v.contiguous() for k, v in controlnet_to_ldm(controlnet_for(loaded.pipe.unet.cpu(), seed)).items()}
        save_file(sd, str(folder / f"{name}.safetensors"))
    loaded.pipe.unet.to(device.device)
    ctx.control.refresh()

    size, steps = args.size, args.steps
    picture = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(picture).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="white")
    unit_a = ControlUnit(module="none", model="cn_a", image=picture)
    unit_b = ControlUnit(module="none", model="cn_b", image=picture.rotate(90))

    def ours(units):
        request = Txt2ImgRequest(prompt="a cat", steps=steps, width=size, height=size, seed=1, sampler_name="Euler",
                                 save_images=False, controlnet_units=units)
        return lambda: ctx.service.txt2img(request)

    store = ctx.control.controlnets
    start = time.perf_counter()
    ours([unit_a])()
    first_job = time.perf_counter() - start
    first_load = store.last_load_seconds
    reads = store.load_count
    start = time.perf_counter()
    ours([unit_a])()
    second_job = time.perf_counter() - start
    print(f"reload: first job read the ControlNet in {first_load * 1000:.1f} ms (job {first_job:.2f} s); "
          f"the second job read {store.load_count - reads} file(s) (job {second_job:.2f} s)")

    _, controlnet = store.load("cn_a")
    pipe = loaded.pipe
    bare = StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=controlnet,
        scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)

    def bare_call():
        bare("a cat", image=picture, num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(1))

    bare_s = median_seconds(bare_call, args.repeats)
    one_s = median_seconds(ours([unit_a]), args.repeats)
    two_s = median_seconds(ours([unit_a, unit_b]), args.repeats)
    print(f"{size}px, {steps} steps, UNet width x{args.width_mult} on {device.device}:")
    print(f"one unit   ours {one_s:.3f} s, bare StableDiffusionControlNetPipeline {bare_s:.3f} s, "
          f"ratio {one_s / bare_s:.3f}")
    print(f"two units  {two_s:.3f} s vs one unit {one_s:.3f} s, ratio {two_s / one_s:.3f}")


if __name__ == "__main__":
    main()
