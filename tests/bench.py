"""One benchmark command: the studio against bare diffusers on the same model, size, steps and sampler.

    python -m tests.bench --quick            # demo model + tiny fixtures: about a minute on 2 CPU cores
    python -m tests.bench                    # adds a full-size SD1.5 (random weights) at 256 px: ~20-30 min there
    python -m tests.bench --size512          # ... and txt2img at 512 px on it (each 512 job ~4x a 256 one)
    python -m tests.bench --rows txt2img,lora --repeats 3 --out docs/bench.md
    python -m tests.bench --gpu              # CUDA, fp16: SD1.5 512 and SDXL 1024, see below

Every row times our code and its baseline side by side in this one run (each warmed up once, then run
alternately `--repeats` times; medians), so the ratio ours / baseline holds for the machine it ran on.
No row asserts a time. The Markdown table at the end is what goes into the README (`--out` writes it).

CPU rows (ROWS): txt2img (demo model at 128; full-size SD1.5 at 256, and 512 with --size512), img2img,
hires. fix (Latent x2), one ControlNet unit, LoRA apply + remove (ours: cached file, deltas in place;
diffusers: load_lora_weights + fuse_lora, unfuse_lora + unload_lora_weights), warm swap (cached) and
cold swap (sd_checkpoints_limit=1) between two checkpoints against `from_single_file` (bare diffusers
has no cache: its swap is a load), the upscaler (ours, tiling off, against spandrel called directly, as
tests/bench_upscale.py), and each precision (full / bf16 / auto) as whole jobs against fp32, through
tests/bench_precision.py (whose contexts keep the studio's default settings: live previews on, a cheap
latent projection; every other row runs with previews off), live previews per method against previews
off and "decode with TAESD" against the VAE (random-weight TAESD / Approx NN files at their real sizes),
`--compile` (inductor) against eager, with its first (compiling) job and a recompile check, and
(tests/bench_sdxl.py) 4 LCM steps at CFG 1 against 25 Euler a steps at CFG 7, and a refiner hand-over
against the base alone at the same steps. The rows
after txt2img use the full-size
model by default and the demo model with --quick. Sampler Euler a, CFG 7, precision auto (what a user
gets) unless the row says otherwise. Nothing downloads (HF_HUB_OFFLINE=1); random weights draw noise.

GPU rows (GPU_ROWS, `--gpu`, device cuda, fp16): for a full-size SD1.5 at 512 and a full-size
SDXL-architecture model at 1024 (random weights, written once to the temp folder), it/s of ours against
bare diffusers (eager), it/s of `--compile` against eager (reported as "compile not available" where
DeviceSettings.from_flags has no `compile`), and `--medvram` / `--lowvram` jobs, each checked to give
finite pixels close to the plain run's, with the peak torch.cuda.max_memory_allocated of each. it/s
comes from two step counts, so the text encoders and the VAE cancel out. Without CUDA it says so and stops.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from safetensors.torch import save_file  # noqa: E402

from backend.control.units import ControlUnit  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from backend.generation.request import HiresFix, Img2ImgRequest, Txt2ImgRequest  # noqa: E402
from backend.previews.library import PREVIEW_METHODS  # noqa: E402
from tests.bench_controlnet import controlnet_for  # noqa: E402
from tests.bench_precision import FULL_SIZE, bench_precision, write_full_size_sd15  # noqa: E402
from tests.bench_rows import (  # noqa: E402
    CFG,
    LORA_RANK,
    NEGATIVE,
    OFFLOAD_STEPS,
    PROMPT,
    SDXL_SIZE,
    SEED,
    STRENGTH,
    Bench,
    Model,
    Row,
    bare_pipe,
    config_folder,
    fmt_ratio,
    fmt_seconds,
    gpu_job,
    gpu_settings,
    link_or_copy,
    noise,
    picture,
    seconds_per_step,
    side_by_side,
    timed,
    write_full_size_sdxl,
)
from tests.bench_sdxl import row_few_step, row_refiner  # noqa: E402
from tests.bench_txt2img import median_seconds  # noqa: E402
from tests.bench_upscale import MODELS as UPSCALER_MODELS  # noqa: E402
from tests.bench_upscale import SPEED_SIZE, _direct, _library, _picture  # noqa: E402
from tests.fixtures import tiny_upscalers  # noqa: E402
from tests.fixtures.tiny_controlnets import controlnet_to_ldm  # noqa: E402
from tests.fixtures.tiny_networks import write_kohya_lora  # noqa: E402
from tests.fixtures.tiny_previews import write_taesd_decoder, write_vae_approx  # noqa: E402

# --------------------------------------------------------------------------- CPU rows


def row_txt2img(b: Bench) -> list[Row]:
    rows = []
    for model in b.txt2img_models():
        ctx, loaded = b.context(model)
        request = Txt2ImgRequest(**b.request(model))

        def bare():
            bare_pipe(loaded, StableDiffusionPipeline)(
                PROMPT, negative_prompt=NEGATIVE, num_inference_steps=model.steps, guidance_scale=CFG,
                width=model.size, height=model.size, latents=noise(loaded, model.size))

        ours, base = side_by_side(lambda: ctx.service.txt2img(request), bare, b.repeats)
        rows.append(Row("txt2img", model.label, str(model.size), str(model.steps), ours, base))
    return rows


def row_img2img(b: Bench) -> list[Row]:
    model = b.main
    ctx, loaded = b.context(model)
    init = picture(model.size)
    request = Img2ImgRequest(**b.request(model), init_images=[init], denoising_strength=STRENGTH)

    def bare():
        bare_pipe(loaded, StableDiffusionImg2ImgPipeline)(
            PROMPT, negative_prompt=NEGATIVE, image=init, strength=STRENGTH, num_inference_steps=model.steps,
            guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED))

    ours, base = side_by_side(lambda: ctx.service.img2img(request), bare, b.repeats)
    return [Row("img2img", model.label, str(model.size), f"{int(model.steps * STRENGTH)} of {model.steps}", ours,
                base, note=f"denoising {STRENGTH}")]


def row_hires(b: Bench) -> list[Row]:
    model = b.main
    ctx, loaded = b.context(model)
    low = model.size // 2
    request = Txt2ImgRequest(**b.request(model, width=low, height=low), hires=HiresFix(
        enabled=True, upscaler="Latent", upscale_by=2.0, denoising_strength=STRENGTH))

    def bare():
        first = bare_pipe(loaded, StableDiffusionPipeline)(
            PROMPT, negative_prompt=NEGATIVE, num_inference_steps=model.steps, guidance_scale=CFG, width=low,
            height=low, latents=noise(loaded, low), output_type="latent").images
        latents = F.interpolate(first.float(), scale_factor=2, mode="bilinear").to(first.dtype)
        bare_pipe(loaded, StableDiffusionImg2ImgPipeline)(  # 4-channel "image": taken as latents
            PROMPT, negative_prompt=NEGATIVE, image=latents, strength=STRENGTH, num_inference_steps=model.steps,
            guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED))

    ours, base = side_by_side(lambda: ctx.service.txt2img(request), bare, b.repeats)
    return [Row("hires. fix", model.label, f"{low} -> {model.size}", f"{model.steps} + {int(model.steps * STRENGTH)}",
                ours, base, note=f"Latent x2, denoising {STRENGTH}; bare: latents, interpolate, img2img")]


def row_controlnet(b: Bench) -> list[Row]:
    model = b.main
    ctx, loaded = b.context(model)
    name = f"bench-cn-{model.path.stem}"
    folder = ctx.root / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in controlnet_to_ldm(controlnet_for(loaded.pipe.unet, seed=1)).items()}
    save_file(weights, str(folder / f"{name}.safetensors"))  # lllyasviel's layout, read by the studio's loader
    del weights
    ctx.control.refresh()
    hint = picture(model.size).convert("L").convert("RGB")
    request = Txt2ImgRequest(**b.request(model), controlnet_units=[ControlUnit(module="none", model=name, image=hint)])
    ctx.service.txt2img(request)  # the first job reads the ControlNet; both sides then use the same model
    _, controlnet = ctx.control.controlnets.load(name)

    def bare():
        bare_pipe(loaded, StableDiffusionControlNetPipeline, controlnet=controlnet)(
            PROMPT, negative_prompt=NEGATIVE, image=hint, num_inference_steps=model.steps, guidance_scale=CFG,
            width=model.size, height=model.size, latents=noise(loaded, model.size))

    ours, base = side_by_side(lambda: ctx.service.txt2img(request), bare, b.repeats)
    return [Row("ControlNet unit", model.label, str(model.size), str(model.steps), ours, base,
                note="one unit, module none; bare: StableDiffusionControlNetPipeline")]


def row_lora(b: Bench) -> list[Row]:
    model = b.main
    ctx, loaded = b.context(model)
    path = write_kohya_lora(loaded.pipe, ctx.networks.loras.folders[0] / "bench-style.safetensors", rank=LORA_RANK,
                            strength=0.05)
    ctx.networks.refresh()
    ctx.networks.activate(loaded, "<lora:bench-style:1>", "")  # warm: the file is read and cached once
    ctx.networks.activate(loaded, "", "")
    applies, removes = [], []
    for _ in range(max(b.repeats, 5)):
        applies.append(timed(lambda: ctx.networks.activate(loaded, "<lora:bench-style:0.8>", "")))
        removes.append(timed(lambda: ctx.networks.activate(loaded, "", "")))
    apply, remove = statistics.median(applies), statistics.median(removes)
    pipe, on, off = loaded.pipe, [], []

    def bare_on():
        pipe.load_lora_weights(str(path), adapter_name="bench")
        pipe.fuse_lora(lora_scale=0.8)

    def bare_off():
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    note = f"rank {LORA_RANK}; ours: apply {fmt_seconds(apply)} + remove {fmt_seconds(remove)} (file cached)"
    try:
        for _ in range(max(b.repeats, 3) + 1):  # the first pair is the warm-up
            on.append(timed(bare_on))
            off.append(timed(bare_off))
        base = statistics.median(on[1:]) + statistics.median(off[1:])
        note += f"; diffusers: load+fuse {fmt_seconds(statistics.median(on[1:]))} + " \
                f"unfuse+unload {fmt_seconds(statistics.median(off[1:]))}"
    except Exception as exc:  # a diffusers / peft refusal is a finding, not a crash of the whole run
        base, note = None, note + f"; diffusers failed: {type(exc).__name__}: {str(exc)[:120]}"
    b.forget(model)  # diffusers' adapters went through this pipeline: the next row loads it afresh
    return [Row("LoRA apply + remove", model.label, "-", "-", apply + remove, base, note=note)]


def _bare_load_seconds(b: Bench, model: Model) -> float:
    """Median seconds of StableDiffusionPipeline.from_single_file with a local config folder (cached per model)."""
    cache = b.bare_loads
    if model.path not in cache:
        _, loaded = b.context(model)
        folder = config_folder(loaded.pipe, Path(tempfile.mkdtemp(prefix="config-", dir=b.work)))
        cache[model.path] = median_seconds(lambda: StableDiffusionPipeline.from_single_file(
            str(model.path), config=str(folder), local_files_only=True, safety_checker=None,
            torch_dtype=b.device.dtype), b.repeats)
        b.forget(model)
        gc.collect()
    return cache[model.path]


def _swap(b: Bench, limit: int) -> tuple[float, Model]:
    """Median seconds of ModelManager.load alternating between two checkpoints (two names, same bytes)."""
    model = b.main
    base = _bare_load_seconds(b, model)
    ctx = b.studio([], sd_checkpoints_limit=limit)
    names = [f"{c}-{model.path.name}" for c in "ab"]
    for name in names:
        link_or_copy(model.path, ctx.root / "checkpoints" / name)
    ctx.manager.refresh()
    for name in names:  # first reads (and hashes), not timed
        ctx.manager.load(name)
    samples = [timed(lambda n=name: ctx.manager.load(n)) for name in names * max(b.repeats, 2 if limit == 1 else 10)]
    ctx.manager.unload_all()
    return statistics.median(samples), base


def row_swap_warm(b: Bench) -> list[Row]:
    ours, base = _swap(b, limit=2)
    return [Row("warm swap (cached)", b.main.label, "-", "-", ours, base, vs="from_single_file",
                note="sd_checkpoints_limit=2; bare diffusers has no cache: its swap is a load")]


def row_swap_cold(b: Bench) -> list[Row]:
    ours, base = _swap(b, limit=1)
    return [Row("cold swap (not cached)", b.main.label, "-", "-", ours, base, vs="from_single_file",
                note="sd_checkpoints_limit=1: read, detect, convert (file in the page cache)")]


def row_upscaler(b: Bench) -> list[Row]:
    size = 128 if b.args.quick else SPEED_SIZE
    name = "animevideov3-size"
    folder = b.work / "upscalers"
    folder.mkdir(exist_ok=True)
    tiny_upscalers.write_compact(folder / f"{name}.pth", **UPSCALER_MODELS[name])
    lib = _library(folder)
    model, image = lib.load(name), _picture(size)
    ours, base = side_by_side(lambda: lib.upscale(image, name, scale=4, tile=0), lambda: _direct(model, image),
                              b.repeats)
    tiled = median_seconds(lambda: lib.upscale(image, name, scale=4), b.repeats)
    return [Row("upscaler x4", "compact 64 feat / 16 conv", f"{size} -> {4 * size}", "-", ours, base,
                vs="spandrel direct", note=f"tiling off; default tiles (192/8): {fmt_seconds(tiled)}")]


def row_precision(b: Bench) -> list[Row]:
    model = b.main
    b.forget()  # each precision gets its own studio (tests/bench_precision.py): free the loaded ones
    request = b.request(model)
    results = {}
    for precision in ("full", "bf16", "auto"):
        results[precision] = bench_precision(model.path, precision, request, b.repeats)
        gc.collect()
    fp32 = results["full"]["full"]
    reference = np.asarray(results["full"]["full image"].convert("RGB"), dtype=np.float64)
    rows = []
    for precision, result in results.items():
        parts = DeviceSettings.from_flags(device="cpu", precision=precision).describe()
        mad = np.abs(np.asarray(result[f"{precision} image"].convert("RGB"), dtype=np.float64) - reference).mean()
        note = f"UNet {parts['unet']}, text {parts['text encoders']}, VAE {parts['vae']}, {parts['layout']}"
        note += f"; MAD vs fp32 {mad:.2f}/255" if precision != "full" else ""
        if "bare bf16" in result:
            note += f"; ours / bare diffusers {result[precision] / result['bare bf16']:.3f}"
        rows.append(Row(f"precision {precision}", model.label, str(model.size), str(model.steps), result[precision],
                        fp32, vs="fp32 (--precision full)", note=note))
    return rows


PREVIEW_JOBS = (  # (show_progress_type, every n steps, sd_vae_decode_method): whole jobs against previews off
    ("Approx cheap", 1, "Full"), ("TAESD", 1, "Full"), (None, 0, "TAESD"))


def row_previews(b: Bench) -> list[Row]:
    """Each preview method's cost per preview (timed on a step's latents, against one step of the job) and
    whole jobs with previews every step against previews off; and "decode with TAESD" against the VAE.
    The TAESD and Approx NN files are random weights at their real sizes (tests/fixtures/tiny_previews.py)."""
    model = b.main
    off, loaded = b.context(model)
    on, _ = b.context(model, tag="previews")
    folder = on.root / "models" / "VAE-approx"
    write_taesd_decoder(folder / "taesd_decoder.pth")
    write_vae_approx(folder / "model.pt")
    request = Txt2ImgRequest(**b.request(model))
    plain = median_seconds(lambda: off.service.txt2img(request), b.repeats)
    step = plain / model.steps  # a step's share of the whole job (encode and decode included)
    latents = noise(loaded, model.size)
    rows = []
    for method in PREVIEW_METHODS:
        previews = on.service.previews.for_job(method)
        each = median_seconds(lambda: previews.preview(loaded.pipe, latents, loaded.variant.family), 5)
        rows.append(Row(f"one {method} preview", model.label, str(model.size), "-", each, step,
                        vs="one step", note=f"{each / step * 100:.1f}% of a step"))
    for method, every, decode in PREVIEW_JOBS:
        on.options.update(live_previews_enable=method is not None, show_progress_type=method or "Approx cheap",
                          show_progress_every_n_steps=every, sd_vae_decode_method=decode)
        ours, base = side_by_side(lambda: on.service.txt2img(request), lambda: off.service.txt2img(request),
                                  b.repeats)
        name = "decode with TAESD" if method is None else f"previews {method}, every step"
        note = "previews off; the base decodes with the VAE" if method is None else f"{(ours / base - 1) * 100:+.1f}%"
        rows.append(Row(name, model.label, str(model.size), str(model.steps), ours, base, vs="previews off",
                        note=note))
    return rows


def row_compiled(b: Bench) -> list[Row]:
    """--compile (inductor) against eager, same precision: the first job (compiling) and warm jobs."""
    model = b.main
    eager, _ = b.context(model)
    settings = dataclasses.replace(b.device, compile="inductor")
    compiled, _ = b.context(model, settings, "compiled")
    compiler = compiled.manager.compiler
    request = Txt2ImgRequest(**b.request(model))
    first = timed(lambda: compiled.service.txt2img(request))
    graphs = compiler.compilations
    compile_s = sum(r.seconds for r in compiler.records)
    ours, base = side_by_side(lambda: compiled.service.txt2img(request),
                              lambda: eager.service.txt2img(request), b.repeats)
    other = Txt2ImgRequest(**b.request(model, prompt="a green cube", seed=SEED + 1))
    compiled.service.txt2img(other)
    failed = f"; FAILED, ran eagerly: {compiler.failures[0]}" if compiler.failures else ""
    note = (f"first job {first:.1f} s ({graphs} graphs compiled in {compile_s:.1f} s by inductor); "
            f"another prompt and seed: {compiler.compilations - graphs} recompiles{failed}")
    return [Row("compiled UNet (--compile)", model.label, str(model.size), str(model.steps), ours, base,
                vs="eager", note=note)]


# The CPU rows in table order; `--rows` picks by these names.
ROWS: dict[str, Callable[[Bench], list[Row]]] = {
    "txt2img": row_txt2img,
    "img2img": row_img2img,
    "hires": row_hires,
    "controlnet": row_controlnet,
    "lora": row_lora,
    "swap-warm": row_swap_warm,
    "swap-cold": row_swap_cold,
    "upscaler": row_upscaler,
    "precision": row_precision,
    "previews": row_previews,
    "compiled-unet": row_compiled,
    "few-step": row_few_step,
    "refiner": row_refiner,
}


# --------------------------------------------------------------------------- GPU rows


def _gpu_eager(b: Bench, model: Model, low: int, high: int) -> tuple[float, float, dict]:
    """Seconds per step of ours and of bare diffusers, eager; and the plain job the offload runs compare with."""
    ctx, loaded = b.context(model, gpu_settings(), "eager")

    def bare_at(n):
        bare_pipe(loaded, type(loaded.pipe))(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=n,
                                              guidance_scale=CFG, width=model.size, height=model.size,
                                              latents=noise(loaded, model.size))

    ours = seconds_per_step(_ours_at(b, ctx, model), low, high, b.repeats)
    bare = seconds_per_step(bare_at, low, high, b.repeats)
    plain = gpu_job(ctx, Txt2ImgRequest(**b.request(model, steps=OFFLOAD_STEPS)), b.repeats)
    return ours, bare, plain


def _ours_at(b: Bench, ctx, model: Model) -> Callable[[int], object]:
    return lambda n: ctx.service.txt2img(Txt2ImgRequest(**b.request(model, steps=n)))


def _gpu_offload(b: Bench, model: Model, flag: str) -> dict:
    ctx, _ = b.context(model, gpu_settings(**{flag: True}), flag)
    return gpu_job(ctx, Txt2ImgRequest(**b.request(model, steps=OFFLOAD_STEPS)), b.repeats)


def _gpu_compiled(b: Bench, model: Model, settings: DeviceSettings, low: int, high: int) -> tuple[float, list]:
    ctx, _ = b.context(model, settings, "compiled")
    seconds = seconds_per_step(_ours_at(b, ctx, model), low, high, b.repeats)
    return seconds, list(getattr(getattr(ctx.manager, "compiler", None), "records", []))


def gpu_rows(b: Bench, model: Model) -> list[Row]:
    """Eager ours vs bare, --medvram / --lowvram vs plain, compiled vs eager; one studio on the GPU at a time
    (each helper returns numbers only, so `forget` frees the GPU before the next one's peak is measured)."""
    high = model.steps
    low = max(1, high // 5)
    label, size, steps = model.label, str(model.size), f"{low} / {high}"
    eager, bare, plain = _gpu_eager(b, model, low, high)
    b.forget(model)
    rows = [Row("GPU fp16 eager s/it", label, size, steps, eager, bare,
                note=f"ours {1 / eager:.2f} it/s, bare {1 / bare:.2f} it/s")]
    for flag in ("medvram", "lowvram"):
        run = _gpu_offload(b, model, flag)
        b.forget(model)
        mad = np.abs(run["pixels"] - plain["pixels"]).mean()
        verdict = "ok" if run["finite"] and plain["finite"] and mad < 2.0 else "CHECK"
        rows.append(Row(f"GPU --{flag} job", label, size, str(OFFLOAD_STEPS), run["seconds"], plain["seconds"],
                        vs="plain run", note=f"{verdict}: peak {run['peak']:.2f} GiB vs {plain['peak']:.2f} GiB; "
                        f"finite {run['finite']} (plain {plain['finite']}); MAD vs plain {mad:.2f}/255"))
    try:
        settings = gpu_settings(compile=True)
    except TypeError:
        return rows + [Row("GPU fp16 compiled s/it", label, size, steps, math.nan, eager, vs="ours eager",
                           note="compile not available (DeviceSettings.from_flags has no compile)")]
    compiled, records = _gpu_compiled(b, model, settings, low, high)
    b.forget(model)
    torch._dynamo.reset()
    note = f"compiled {1 / compiled:.2f} it/s vs eager {1 / eager:.2f} it/s"
    if records:
        note += f"; {len(records)} compilation(s), {sum(r.seconds for r in records):.0f} s"
        note += "".join(f"; FAILED (ran eagerly): {r.failed}" for r in records if r.failed)
    return rows + [Row("GPU fp16 compiled s/it", label, size, steps, compiled, eager, vs="ours eager", note=note)]


def row_gpu_sd15(b: Bench) -> list[Row]:
    with torch.device("cuda"):  # random weights drawn on the GPU: seconds, not minutes
        path = write_full_size_sd15(FULL_SIZE)
    return gpu_rows(b, Model(path, "SD1.5 (random)", 512, b.args.steps or 25))


def row_gpu_sdxl(b: Bench) -> list[Row]:
    with torch.device("cuda"):
        path = write_full_size_sdxl(SDXL_SIZE)
    return gpu_rows(b, Model(path, "SDXL (random)", 1024, b.args.steps or 25))


GPU_ROWS: dict[str, Callable[[Bench], list[Row]]] = {"gpu-sd15": row_gpu_sd15, "gpu-sdxl": row_gpu_sdxl}


# --------------------------------------------------------------------------- table and command


def machine_line(device: DeviceSettings) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name() if device.device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    parts = device.describe()
    return (f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
            f"{transformers.__version__}; {parts['device']}: UNet {parts['unet']}, text {parts['text encoders']}, "
            f"VAE {parts['vae']} ({parts['why']})")


def table(rows: list[Row]) -> str:
    lines = ["| row | model | size | steps | ours | baseline | ours / baseline | baseline is | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = fmt_ratio(r.ratio)
        lines.append(f"| {r.name} | {r.model} | {r.size} | {r.steps} | {fmt_seconds(r.ours)} | {fmt_seconds(r.base)} | "
                     f"{ratio} | {r.vs} | {r.note} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="demo model and tiny fixtures only: about a minute on 2 cores")
    ap.add_argument("--size512", action="store_true", help="add txt2img at 512 px on the full-size model (slow on CPU)")
    ap.add_argument("--gpu", action="store_true", help="the CUDA rows: fp16 SD1.5 512 and SDXL 1024")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all of the mode's rows)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per side after the warm-up, median (default 3 with --quick, else 1)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps instead of each model's default")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")
    args = ap.parse_args(argv)
    registry = GPU_ROWS if args.gpu else ROWS
    args.row_names = [n.strip() for n in args.rows.split(",") if n.strip()] or list(registry)
    unknown = [n for n in args.row_names if n not in registry]
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; {'--gpu ' if args.gpu else ''}rows: {', '.join(registry)}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 1
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.gpu and (args.quick or args.size512):
        ap.error("--gpu has its own models and sizes: leave out --quick and --size512")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        sys.exit(f"python -m tests.bench --gpu needs a CUDA GPU, and this torch {torch.__version__} "
                 f"(CUDA build: {torch.version.cuda or 'none'}) sees none: torch.cuda.is_available() is False. "
                 "Run it on a GPU machine, or leave out --gpu for the CPU rows.")
    torch.set_grad_enabled(False)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device = gpu_settings() if args.gpu else DeviceSettings.from_flags()
    registry = GPU_ROWS if args.gpu else ROWS
    started = time.perf_counter()
    bench = Bench(args, device)
    rows: list[Row] = []
    try:
        for name in args.row_names:
            row_start = time.perf_counter()
            try:
                done = registry[name](bench)
            except Exception as exc:  # one broken row must not cost the others' numbers
                traceback.print_exc()
                done = [Row(name, "-", "-", "-", math.nan, note=f"failed: {type(exc).__name__}: {str(exc)[:160]}")]
            rows += done
            for r in done:
                ratio = fmt_ratio(r.ratio)
                print(f"[{time.perf_counter() - started:6.0f} s] {r.name} ({r.model}, {r.size}): ours "
                      f"{fmt_seconds(r.ours)}, {r.vs} {fmt_seconds(r.base)}, ratio {ratio}", flush=True)
            print(f"         ({name}: {time.perf_counter() - row_start:.0f} s)", flush=True)
    finally:
        bench.close()
    mode = "--gpu" if args.gpu else "--quick" if args.quick else "default" + (" --size512" if args.size512 else "")
    header = (f"`python -m tests.bench` ({mode}, repeats {args.repeats}), {time.perf_counter() - started:.0f} s: "
              f"{machine_line(device)}")
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
