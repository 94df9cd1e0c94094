"""Benchmark: the studio in fp32 and in bf16 (UNet and text encoder; VAE fp32), side by side in one run.

    python -m tests.bench_precision [--size 256] [--steps 10] [--repeats 1] [--grid outputs/bench-precision.png]

On the shipped demo model at 128 px and on a full-size SD1.5-architecture model (random weights, written
once to the temp folder in the original single-file layout) it prints, per model:
  - seconds per whole txt2img job (our GenerationService) in fp32 and in bf16, and their ratio;
  - bf16 ours / a bare diffusers pipeline call on the same bf16 components (our overhead);
  - the mean absolute difference of the bf16 picture from the fp32 one (of 255),
and writes a grid: fp32 | bf16 | difference x8, one row per model. Random weights draw noise-like
pictures, so the full-size row measures speed and numerical drift, not looks.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,  # noqa: E402
)
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from backend.app_context import DEMO_CHECKPOINT, AppPaths, build_app_context  # noqa: E402
from backend.devices import DeviceSettings, cpu_has_native_bf16  # noqa: E402
from backend.generation.request import Txt2ImgRequest  # noqa: E402
from backend.models import architecture as arch  # noqa: E402
from backend.models.types import ModelFamily  # noqa: E402
from tests.bench_txt2img import median_seconds as seconds  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, to_original_layout  # noqa: E402

FULL_SIZE = Path(tempfile.gettempdir()) / "studio-bench" / "sd15-random.safetensors"


def write_full_size_sd15(path: Path) -> Path:
    """A random-weight SD1.5 (860M UNet, CLIP ViT-L text encoder, the SD VAE) in the original layout."""
    if path.is_file():
        return path
    torch.manual_seed(0)
    family = ModelFamily.SD1
    parts = {"unet": UNet2DConditionModel.from_config(arch.family_config(family, "unet")).eval(),
             "vae": AutoencoderKL.from_config(arch.family_config(family, "vae")).eval(),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.family_config(family, "text_encoder"))).eval()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original_layout(TinySpec("sd1"), parts), str(path))
    return path


def bench_model(checkpoint: Path, size: int, steps: int, repeats: int) -> dict:
    request = dict(prompt="a red ball on a blue table", negative_prompt="blurry", steps=steps, width=size,
                   height=size, seed=3, sampler_name="Euler a", checkpoint=checkpoint.name, save_images=False)
    out: dict = {"name": checkpoint.name, "size": size}
    for precision in ("full", "bf16"):
        out |= bench_precision(checkpoint, precision, request, repeats)
    a = np.asarray(out["full image"].convert("RGB"), dtype=np.float64)
    b = np.asarray(out["bf16 image"].convert("RGB"), dtype=np.float64)
    out["mad"] = float(np.abs(a - b).mean())
    out["diff"] = Image.fromarray(np.clip(np.abs(a - b) * 8, 0, 255).astype(np.uint8))
    return out


def bench_precision(checkpoint: Path, precision: str, request: dict, repeats: int) -> dict:
    """Seconds per job of our service (and, in bf16, of a bare pipeline call) in one precision."""
    device = DeviceSettings.from_flags(device="cpu", precision=precision)
    ctx = build_app_context(AppPaths(root=Path(tempfile.mkdtemp(prefix="bench-")), checkpoint_dirs=[],
                                     builtin_checkpoints=[checkpoint]), device)
    loaded = ctx.manager.load(checkpoint.name)
    holder = {}

    def ours():
        holder["image"] = ctx.service.txt2img(Txt2ImgRequest(**request)).images[0]

    out = {precision: seconds(ours, repeats), f"{precision} image": holder["image"]}
    if precision == "bf16":
        size, steps = request["width"], request["steps"]

        def bare():
            pipe = StableDiffusionPipeline(**{**loaded.pipe.components, "scheduler":
                                              EulerAncestralDiscreteScheduler.from_config(loaded.pipe.scheduler.config)})
            pipe.set_progress_bar_config(disable=True)
            latents = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(3))
            pipe(request["prompt"], negative_prompt=request["negative_prompt"], num_inference_steps=steps,
                 guidance_scale=7.0, width=size, height=size, latents=latents.to(device.dtype))

        out["bare bf16"] = seconds(bare, repeats)
    return out


def unet_forward_rows(checkpoint: Path, size: int, repeats: int) -> list[tuple[str, float]]:
    """Seconds of one UNet forward with CFG (batch 2) at `size`, per precision and memory layout."""
    from backend.models.loader import load_single_file

    pipe, _ = load_single_file(checkpoint, DeviceSettings.from_flags(device="cpu", precision="full"))
    unet = pipe.unet
    latents = torch.randn(2, 4, size // 8, size // 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    rows = []
    for label, dtype, layout in (("fp32", torch.float32, torch.contiguous_format),
                                 ("bf16", torch.bfloat16, torch.contiguous_format),
                                 ("bf16 + channels_last", torch.bfloat16, torch.channels_last)):
        unet.to(dtype=dtype, memory_format=layout)
        x, c = latents.to(dtype).contiguous(memory_format=layout), context.to(dtype)
        rows.append((label, seconds(lambda: unet(x, 500, encoder_hidden_states=c), repeats)))
    return rows


def write_grid(rows: list[dict], path: Path) -> None:
    tile = max(r["size"] for r in rows)
    grid = Image.new("RGB", (3 * tile, len(rows) * tile), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate((row["full image"], row["bf16 image"], row["diff"])):
            grid.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (x * tile, y * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="of the full-size model's pictures")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-full-size", action="store_true")
    ap.add_argument("--grid", type=Path, default=Path("outputs") / "bench-precision.png")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    print(f"CPU native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [bench_model(DEMO_CHECKPOINT, 128, 20, max(args.repeats, 3))]
    if not args.skip_full_size:
        rows.append(bench_model(write_full_size_sd15(FULL_SIZE), args.size, args.steps, args.repeats))
    print("| model | size | fp32 s/job | bf16 s/job | bf16 speed-up | bf16 ours / bare diffusers | bf16 vs fp32 MAD |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['size']} | {r['full']:.2f} | {r['bf16']:.2f} | {r['full'] / r['bf16']:.2f}x | "
              f"{r['bf16'] / r['bare bf16']:.3f} | {r['mad']:.2f} / 255 |")
    if not args.skip_full_size:
        forward = unet_forward_rows(FULL_SIZE, args.size, max(args.repeats, 3))
        print(f"\n| full-size UNet forward, {args.size} px, batch 2 | seconds | vs fp32 |\n| --- | --- | --- |")
        for label, t in forward:
            print(f"| {label} | {t:.2f} | {forward[0][1] / t:.2f}x |")
    write_grid(rows, args.grid)
    print(f"grid (fp32 | bf16 | difference x8): {args.grid}")


if __name__ == "__main__":
    main()
