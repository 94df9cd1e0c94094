"""What the rows of `python -m tests.bench` share: the row record, the run's state and small helpers.

A row function (tests/bench.py) takes the run's `Bench` and returns `Row`s; `Bench` holds the options,
the work folder and the studios it loaded (one per model and device settings), so rows reuse them.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
)

from backend.app_context import DEMO_CHECKPOINT, AppPaths, build_app_context  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from backend.generation.request import Txt2ImgRequest  # noqa: E402
from backend.models import architecture as arch  # noqa: E402
from backend.models.types import ModelFamily  # noqa: E402
from tests.bench_precision import FULL_SIZE, write_full_size_sd15  # noqa: E402
from tests.bench_txt2img import median_seconds  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, to_original_layout  # noqa: E402

BENCH_DIR = FULL_SIZE.parent  # the run's work folder goes beside the full-size file, so hard links work
SDXL_SIZE = BENCH_DIR / "sdxl-random-fp16.safetensors"
PROMPT, NEGATIVE, SEED, CFG, STRENGTH = "a red ball on a blue table", "blurry", 3, 7.0, 0.6
LORA_RANK, OFFLOAD_STEPS = 16, 8


@dataclass
class Row:
    """One line of the table: our seconds against a baseline's, measured side by side."""

    name: str
    model: str
    size: str
    steps: str
    ours: float
    base: float | None = None
    vs: str = "bare diffusers"  # what the baseline is
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ours / self.base if self.base and math.isfinite(self.ours) else None


@dataclass(frozen=True)
class Model:
    path: Path
    label: str
    size: int
    steps: int

    def at(self, size: int) -> "Model":
        return Model(self.path, self.label, size, self.steps)


# --------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(ours: Callable[[], object], bare: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of both after one warm-up each, run alternately so a busy neighbour slows both alike."""
    ours()
    bare()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours))
        b.append(timed(bare))
    return statistics.median(a), statistics.median(b)


def picture(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (30, 60, 160))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 40, 30))
    return image


def noise(loaded, size: int) -> torch.Tensor:
    """The start latents our runner draws for SEED (CPU generator), on the UNet's device and dtype."""
    scale, channels = loaded.pipe.vae_scale_factor, loaded.pipe.vae.config.latent_channels
    x = torch.randn((1, channels, size // scale, size // scale), generator=torch.Generator("cpu").manual_seed(SEED))
    return x.to(loaded.pipe.device, loaded.pipe.unet.dtype)


def bare_pipe(loaded, cls: type, **extra):
    """A bare diffusers pipeline on the loaded components, with its own Euler a scheduler."""
    scheduler = EulerAncestralDiscreteScheduler.from_config(loaded.pipe.scheduler.config)
    pipe = cls(**{**loaded.pipe.components, "scheduler": scheduler, **extra})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def config_folder(pipe, folder: Path) -> Path:
    """A diffusers folder with configs only (no weights): what `from_single_file(config=...)` reads."""
    pipe.save_config(folder)
    index = json.loads((folder / "model_index.json").read_text())
    for name, part in pipe.components.items():
        if part is None:
            continue
        if hasattr(part, "save_config"):  # diffusers models and schedulers
            part.save_config(folder / name)
        elif isinstance(part, PreTrainedModel):
            part.config.save_pretrained(folder / name)
        else:  # tokenizers
            part.save_pretrained(folder / name)
        # A studio subclass (the VAE that keeps its own precision) is named by its library base class.
        base = next(c for c in type(part).__mro__ if c.__module__.split(".")[0] in ("diffusers", "transformers"))
        index[name] = [base.__module__.split(".")[0], base.__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def link_or_copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # a second name for the same bytes: the manager sees two checkpoints
    except OSError:
        shutil.copyfile(source, target)
    return target


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.3f}" if ratio >= 0.001 else f"{ratio:.1e}"


# --------------------------------------------------------------------------- the run's state


class Bench:
    """The run's options, work folder and loaded studios (one per model and device settings)."""

    def __init__(self, args: argparse.Namespace, device: DeviceSettings):
        self.args, self.device, self.repeats = args, device, args.repeats
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_DIR))
        steps = args.steps
        self.demo = Model(DEMO_CHECKPOINT, "demo model", 128, steps or (8 if args.quick else 20))
        self.full = None
        if not args.quick and not args.gpu:
            self.full = Model(write_full_size_sd15(FULL_SIZE), "SD1.5 (random)", 256, steps or 10)
        self.main = self.full or self.demo  # the model of every row after txt2img
        self._contexts: dict[tuple, tuple] = {}
        self.bare_loads: dict[Path, float] = {}  # from_single_file seconds per model, shared by the swap rows

    def txt2img_models(self) -> list[Model]:
        models = [self.demo]
        if self.full:
            models += [self.full] + ([self.full.at(512)] if self.args.size512 else [])
        return models

    def request(self, model: Model, **changes) -> dict:
        return dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=model.steps, width=model.size, height=model.size,
                    seed=SEED, sampler_name="Euler a", cfg_scale=CFG, checkpoint=model.path.name,
                    save_images=False) | changes

    def studio(self, checkpoints: list[Path], device: DeviceSettings | None = None, **options):
        """A fresh studio context in its own folder (its own config.json), hashes carried from the last."""
        root = Path(tempfile.mkdtemp(prefix="ctx-", dir=self.work))
        if (self.work / "cache.json").is_file():
            shutil.copyfile(self.work / "cache.json", root / "cache.json")
        ctx = build_app_context(AppPaths(root=root, checkpoint_dirs=[root / "checkpoints"],
                                         builtin_checkpoints=checkpoints), device or self.device)
        ctx.options.update(live_previews_enable=False, **options)
        return ctx

    def context(self, model: Model, device: DeviceSettings | None = None, tag: str = "plain"):
        """(context, loaded checkpoint) for `model`, loaded once per tag and kept until `forget`."""
        key = (model.path, tag)
        if key not in self._contexts:
            ctx = self.studio([model.path], device)
            self._contexts[key] = (ctx, ctx.manager.load(model.path.name))
            if ctx.root.joinpath("cache.json").is_file():
                shutil.copyfile(ctx.root / "cache.json", self.work / "cache.json")
        return self._contexts[key]

    def forget(self, model: Model | None = None, tag: str | None = None) -> None:
        """Drop the studios of `model` (all when None) with `tag` (any when None), and their memory."""
        for key in [k for k in self._contexts if (model is None or k[0] == model.path) and tag in (None, k[1])]:
            ctx, _ = self._contexts.pop(key)
            ctx.manager.unload_all()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.forget()
        shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------- GPU helpers


def write_full_size_sdxl(path: Path) -> Path:
    """A random-weight SDXL base (2.6B UNet, CLIP ViT-L + OpenCLIP bigG, the SDXL VAE), original layout, fp16."""
    if path.is_file():
        return path
    torch.manual_seed(0)
    family = ModelFamily.SDXL
    parts = {"unet": UNet2DConditionModel.from_config(arch.family_config(family, "unet")).eval(),
             "vae": AutoencoderKL.from_config(arch.family_config(family, "vae")).eval(),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.family_config(family, "text_encoder"))).eval(),
             "text_encoder_2": CLIPTextModelWithProjection(
                 CLIPTextConfig(**arch.family_config(family, "text_encoder_2"))).eval()}
    sd = to_original_layout(TinySpec("sdxl"), parts)
    del parts
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to("cpu", torch.float16) for k, v in sd.items()}, str(path))
    return path


def gpu_settings(**flags) -> DeviceSettings:
    return DeviceSettings.from_flags(device="cuda", precision="half", **flags)


def gpu_job(ctx, request: Txt2ImgRequest, repeats: int) -> dict:
    """Seconds per job, peak CUDA memory over the runs, the last picture and whether its pixels were finite."""
    holder = {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # NaN pixels show as numpy's "invalid value encountered in cast"
        seconds = median_seconds(lambda: holder.update(image=ctx.service.txt2img(request).images[0]), repeats)
    pixels = np.asarray(holder["image"].convert("RGB"), dtype=np.float64)
    finite = pixels.std() > 0 and not any("invalid value" in str(w.message) for w in caught)
    return {"seconds": seconds, "peak": torch.cuda.max_memory_allocated() / 2**30, "pixels": pixels, "finite": finite}


def seconds_per_step(run: Callable[[int], object], low: int, high: int, repeats: int) -> float:
    """(t(high) - t(low)) / (high - low): the sampler's steps alone, text encoding and decoding cancel out."""
    return (median_seconds(lambda: run(high), repeats) - median_seconds(lambda: run(low), repeats)) / (high - low)
