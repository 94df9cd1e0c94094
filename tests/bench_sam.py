"""Bench: a second click on the same picture against the first, in one run (`python -m tests.bench_sam`).

The first click encodes the picture (the ViT image encoder at 1024 px), the
second reuses the embedding and runs only the prompt encoder and mask decoder.
Random weights in the real ViT-B layout (segment_anything's build_sam_vit_b,
saved as the released file is and read back through the studio's loader):
the cost is the architecture's, not the weights'.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from segment_anything import sam_model_registry

from backend.extras.segment import SamLibrary
from tests.fixtures.tiny_sam import noise_picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--clicks", type=int, default=5, help="clicks after the first")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"sam_{args.type}_random.pth"
        torch.save(sam_model_registry[args.type]().state_dict(), path)
        library = SamLibrary([Path(folder)], torch.device("cpu"), torch.float32)
        image = noise_picture(args.width, args.height)
        start = time.perf_counter()
        library.predict(path.name, image, [(100, 100)])
        load_and_first = time.perf_counter() - start
        # the load is a one-off: time a first click on a fresh picture with the model already loaded
        other = noise_picture(args.width, args.height, seed=1)
        start = time.perf_counter()
        library.predict(path.name, other, [(100, 100)])
        first = time.perf_counter() - start
        seconds = []
        for i in range(args.clicks):
            start = time.perf_counter()
            library.predict(path.name, other, [(120 + 40 * i, 200)], negative=[(10, 10)])
            seconds.append(time.perf_counter() - start)
        later = sorted(seconds)[len(seconds) // 2]
        print(f"SAM {args.type} (random weights, real layout), {args.width}x{args.height} picture, "
              f"{torch.get_num_threads()} CPU threads")
        print(f"load + first click      {load_and_first:8.3f} s")
        print(f"first click (encode)    {first:8.3f} s")
        print(f"later click (median/{args.clicks}) {later:8.3f} s")
        print(f"ratio later/first       {later / first:8.4f}   encoder runs: {library.encoder_runs} "
              f"for {2 + args.clicks} clicks on 2 pictures")


if __name__ == "__main__":
    main()
