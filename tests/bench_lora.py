"""Benchmark: putting a LoRA on and taking it off, against reloading the checkpoint, in one run.

    python -m tests.bench_lora [--width-mult 4] [--rank 16] [--repeats 5] [--checkpoint PATH]

Prints, for the same checkpoint:
  apply    LoRA set on (read from the cache, deltas added in place)
  remove   every patched weight copied back (bit for bit)
  reload   ModelManager reading the checkpoint from disk again (what a reload-based LoRA would cost)
and the ratio (apply + remove) / reload. With --checkpoint a real file is used, else a fixture.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from backend.app_context import AppPaths, build_app_context  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint  # noqa: E402
from tests.bench_txt2img import median_seconds  # noqa: E402  (median after a warm-up)
from tests.fixtures.tiny_networks import write_kohya_lora  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width-mult", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    device = DeviceSettings.from_flags(device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    models = work / "models" / "Stable-diffusion"
    if args.checkpoint:
        models.mkdir(parents=True)
        (models / args.checkpoint.name).symlink_to(args.checkpoint.resolve())
        name = args.checkpoint.name
    else:
        name = "model.safetensors"
        write_checkpoint(models / name, TinySpec("sd1", width=args.width_mult), seed=1)
    ctx = build_app_context(AppPaths(root=work, checkpoint_dirs=[models], builtin_checkpoints=[]), device)
    loaded = ctx.manager.load(name)
    write_kohya_lora(loaded.pipe, ctx.networks.loras.folders[0] / "style.safetensors", rank=args.rank,
                     strength=0.05)
    ctx.networks.refresh()
    ctx.networks.activate(loaded, "<lora:style:1>", "")  # warm: the file is read and cached once
    ctx.networks.activate(loaded, "", "")

    applies, removes = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ctx.networks.activate(loaded, "<lora:style:0.8>", "")
        applies.append(time.perf_counter() - start)
        start = time.perf_counter()
        ctx.networks.activate(loaded, "", "")
        removes.append(time.perf_counter() - start)
    t_apply, t_remove = statistics.median(applies), statistics.median(removes)

    def reload():
        ctx.manager.unload_all()
        ctx.manager.load(name)

    t_reload = median_seconds(reload, max(1, args.repeats // 2))
    unet_params = sum(p.numel() for p in loaded.pipe.unet.parameters()) / 1e6
    print(f"device {device.device}, checkpoint {name} (UNet {unet_params:.1f}M params), LoRA rank {args.rank}")
    print(f"apply {t_apply * 1000:.1f} ms + remove {t_remove * 1000:.1f} ms vs reload {t_reload * 1000:.1f} ms: "
          f"ratio {(t_apply + t_remove) / t_reload:.3f}")


if __name__ == "__main__":
    main()
