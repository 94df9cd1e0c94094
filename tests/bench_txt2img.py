"""Benchmark: our txt2img and loading against bare diffusers, side by side in one run.

    python -m tests.bench_txt2img [--width-mult 4] [--steps 20] [--size 256] [--repeats 3]

Prints three ratios for the same fixture checkpoint and parameters:
  txt2img   our GenerationService (request, scheduler per call, progress callback, infotext, no saving)
            / a bare StableDiffusionPipeline call with the same components and scheduler
  cold load ModelManager.load (read, detect, convert, hash) / StableDiffusionPipeline.from_single_file
            with a local config folder
  warm swap ModelManager.load of a checkpoint already in the cache (absolute time)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

from backend.app_context import AppPaths, build_app_context  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from backend.generation.request import Txt2ImgRequest  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs, after one warm-up run."""
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width-mult", type=int, default=4, help="UNet width multiplier of the fixture model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    device = DeviceSettings.from_flags(device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    models = work / "models"
    write_checkpoint(models / "a.safetensors", TinySpec("sd1", width=args.width_mult), seed=1)
    write_checkpoint(models / "b.safetensors", TinySpec("sd1", width=args.width_mult), seed=2)
    ctx = build_app_context(AppPaths(root=work, checkpoint_dirs=[models]), device)
    ctx.options.update(sd_checkpoints_limit=2)

    # --- cold load: ours vs from_single_file with a local config folder
    start = time.perf_counter()
    loaded = ctx.manager.load("a")
    ours_load = time.perf_counter() - start
    config_dir = work / "config"  # a local diffusers folder: from_single_file reads only its configs
    loaded.pipe.save_pretrained(config_dir)
    start = time.perf_counter()
    bare_pipe = StableDiffusionPipeline.from_single_file(
        str(models / "a.safetensors"), config=str(config_dir), local_files_only=True, safety_checker=None,
        torch_dtype=device.dtype)
    bare_load = time.perf_counter() - start
    bare_pipe.to(device.device)
    bare_pipe.set_progress_bar_config(disable=True)

    # --- txt2img: ours vs a bare pipeline call on the same components
    request = Txt2ImgRequest(prompt="a red circle", negative_prompt="blurry", steps=args.steps,
                             width=args.size, height=args.size, seed=1, sampler_name="Euler a",
                             checkpoint="a", save_images=False)

    def ours():
        ctx.service.txt2img(request)

    def bare():
        pipe = StableDiffusionPipeline(**{**loaded.pipe.components, "scheduler":
                                          EulerAncestralDiscreteScheduler.from_config(loaded.pipe.scheduler.config)})
        pipe.set_progress_bar_config(disable=True)
        latents = torch.randn((1, 4, args.size // 8, args.size // 8), generator=torch.Generator("cpu").manual_seed(1))
        pipe("a red circle", negative_prompt="blurry", num_inference_steps=args.steps, guidance_scale=7.0,
             width=args.size, height=args.size, latents=latents.to(device.device, device.dtype))

    t_ours = median_seconds(ours, args.repeats)
    t_bare = median_seconds(bare, args.repeats)

    # --- warm swap between two cached checkpoints
    ctx.manager.load("b")
    swaps = []
    for name in ["a", "b"] * 5:
        start = time.perf_counter()
        ctx.manager.load(name)
        swaps.append(time.perf_counter() - start)

    params = sum(p.numel() for p in loaded.pipe.unet.parameters()) / 1e6
    print(f"device {device.device}, fixture UNet {params:.1f}M params, {args.size}px, {args.steps} steps")
    print(f"txt2img   ours {t_ours:.3f}s / bare diffusers {t_bare:.3f}s = {t_ours / t_bare:.3f}")
    print(f"cold load ours {ours_load:.3f}s / from_single_file {bare_load:.3f}s = {ours_load / bare_load:.3f}")
    print(f"warm swap median {statistics.median(swaps) * 1000:.3f} ms (max {max(swaps) * 1000:.3f} ms)")


if __name__ == "__main__":
    main()
