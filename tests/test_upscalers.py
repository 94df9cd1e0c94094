"""The Extras upscaler engine: names, sizes, tiles, precision, bad files, pictures of every mode."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.extras.spandrel_models import load_image_model
from backend.extras.upscalers import (MAX_UPSCALE_SIDE, UpscaleError, UpscaleInterrupted, UpscalerLibrary,
                                      check_output_size, target_size)
from backend.extras.upscalers import engine, tiling
from backend.images.loading import to_rgb
from tests.fixtures import tiny_upscalers as tiny

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A studio's models/ folders as a user fills them, good files and misplaced ones, plus an extra folder."""
    root = tmp_path_factory.mktemp("studio")
    esrgan, real, swin, extra = (root / "models" / "ESRGAN", root / "models" / "RealESRGAN",
                                 root / "models" / "SwinIR", root / "extra")
    for folder in (esrgan, real, swin, extra):
        folder.mkdir(parents=True)
    tiny.write_old_esrgan(esrgan / "ESRGAN_4x.pth")
    tiny.write_compact(esrgan / "dup.pth", seed=10)
    tiny.write_hostile_pickle(esrgan / "evil.pth", root / "marker")
    tiny.write_lora(esrgan / "add_detail.safetensors")
    tiny.write_sd_checkpoint(esrgan / "v1-5-pruned.safetensors")
    tiny.write_realesrgan_x4plus(real / "RealESRGAN_x4plus.pth")
    tiny.write_realesrgan_x2plus(real / "RealESRGAN_x2plus.pth")
    tiny.write_compact(real / "realesr-general-x4v3.pth")
    tiny.write_swinir(swin / "SwinIR_4x.pth", scale=4)
    tiny.write_compact(extra / "dup.pth", seed=11)
    tiny.write_compact(extra / "4x-Sharp.pth", scale=2, seed=12)  # the name says 4x; the model is x2
    return root


def dirs(tree: Path) -> dict:
    models = tree / "models"
    return {"ESRGAN": [models / "ESRGAN", tree / "extra"], "RealESRGAN": [models / "RealESRGAN"],
            "SwinIR": [models / "SwinIR"], "HAT": [models / "HAT"], "DAT": [models / "DAT"]}


@pytest.fixture
def library(tree) -> UpscalerLibrary:
    return UpscalerLibrary(dirs(tree), CPU, torch.float32, cache_size=2)


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    # smooth content plus noise: what a model sees in a photo, not a flat colour
    y, x = np.mgrid[0:height, 0:width]
    base = (np.sin(x / 5.0)[..., None] * 60 + np.cos(y / 7.0)[..., None] * 60 + 128).repeat(channels, axis=2)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8), mode)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def direct(model, image: Image.Image) -> Image.Image:
    """The spandrel model called on the whole picture, the reference every tiled result is held to."""
    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    return Image.fromarray(tiling.to_uint8(model(x)[0]), "RGB")


class Watch:
    """Records every input the network's forward sees, through a forward pre-hook."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.model.register_forward_pre_hook(lambda _m, args: self.shapes.append(args[0].shape[-2:]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----- sizes ---------------------------------------------------------------------------------------------

def test_target_size_follows_a1111_extras():
    assert target_size(512, 256, scale=2) == (1024, 512)
    assert target_size(100, 30, scale=2.5) == (250, 75)
    assert target_size(3, 3, scale=0.1) == (1, 1)  # never empty
    # scale to: the scale that covers the box, aspect ratio kept; crop trims the cover to exactly the box
    assert target_size(512, 256, size=(1024, 1024)) == (2048, 1024)
    assert target_size(512, 256, size=(1024, 1024), crop=True) == (1024, 1024)
    assert target_size(640, 480, size=(800, 800), crop=True) == (800, 800)
    for bad in ({}, {"scale": 2, "size": (8, 8)}, {"scale": 0}, {"scale": float("nan")}, {"size": (0, 5)}):
        with pytest.raises(UpscaleError):
            target_size(10, 10, **bad)


def test_output_size_limits_name_the_limit():
    check_output_size(MAX_UPSCALE_SIDE, 1000)
    with pytest.raises(UpscaleError, match=str(MAX_UPSCALE_SIDE)):
        check_output_size(20000, 20000)
    with pytest.raises(UpscaleError, match="megapixels"):
        check_output_size(12000, 12000)
    with pytest.raises(UpscaleError):
        check_output_size(0, 10)


def test_huge_request_is_refused_before_any_work(tree):
    lib = UpscalerLibrary(dirs(tree), CPU, torch.float32)
    started = time.perf_counter()
    with pytest.raises(UpscaleError, match="16384"):
        lib.upscale(picture(100, 100), "RealESRGAN_x4plus", size=(20000, 20000))
    with pytest.raises(UpscaleError, match="16384"):
        lib.upscale(picture(100, 100), "Lanczos", scale=200)
    assert time.perf_counter() - started < 2 and lib.loaded() == []  # no model was even read


# ----- names, files, caching -------------------------------------------------------------------------------

def test_names_use_a1111_labels_and_leave_out_unusable_files(library):
    names = library.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    for label in ("R-ESRGAN 4x+", "R-ESRGAN 2x+", "R-ESRGAN General 4xV3", "SwinIR 4x", "ESRGAN_4x", "4x-Sharp"):
        assert label in names
    assert not {"evil", "add_detail", "v1-5-pruned"} & set(names)
    assert names[3:] == sorted(names[3:], key=str.lower)
    entry = next(e for e in library.entries() if e["name"] == "R-ESRGAN 4x+")
    assert entry["model_name"] == "RealESRGAN_x4plus" and entry["model_path"].endswith("RealESRGAN_x4plus.pth")
    assert set(entry) == {"name", "model_name", "model_path", "model_url", "scale"} and entry["scale"] == 4


def test_stem_is_an_alias_of_the_label(library):
    image = picture(12, 10)
    by_label = library.upscale(image, "R-ESRGAN General 4xV3", scale=4, tile=0)
    by_stem = library.upscale(image, "realesr-general-x4v3", scale=4, tile=0)
    assert np.array_equal(pixels(by_label), pixels(by_stem))


def test_scale_comes_from_the_model_not_the_name(library):
    assert library.model_scale("4x-Sharp") == 2
    assert library.model_scale("R-ESRGAN 2x+") == 2
    assert library.model_scale("SwinIR 4x") == 4
    assert library.model_scale("Lanczos") is None
    assert {e["name"]: e["scale"] for e in library.entries()}["4x-Sharp"] == 2
    assert library.upscale(picture(10, 8), "4x-Sharp").size == (20, 16)  # no scale given: the model's own


def test_same_stem_in_two_folders_gets_two_names(library):
    dups = [n for n in library.names() if n.startswith("dup")]
    assert len(dups) == 2 and "dup" in dups
    a, b = (library.upscale(picture(8, 8), n, scale=4, tile=0) for n in dups)
    assert not np.array_equal(pixels(a), pixels(b))  # two files, two models


def test_unknown_name_says_what_exists_and_where_files_go(library, tree):
    with pytest.raises(UpscaleError) as err:
        library.upscale(picture(8, 8), "4x-UltraSharp", scale=2)
    assert "R-ESRGAN 4x+" in str(err.value) and str(tree / "models" / "ESRGAN") in str(err.value)


def test_bad_files_are_explained_and_good_ones_keep_serving(library, tree):
    reasons = {e["name"]: e["error"] for e in library.unusable()}
    assert "LoRA" in reasons["add_detail"] and "models/Lora" in reasons["add_detail"]
    assert "Stable Diffusion checkpoint" in reasons["v1-5-pruned"]
    assert "refused" in reasons["evil"]
    for name, words in (("evil", "refused"), ("add_detail", "LoRA"), ("v1-5-pruned", "checkpoint")):
        with pytest.raises(UpscaleError, match=words):
            library.upscale(picture(8, 8), name, scale=2)
    assert not (tree / "marker").exists()  # the pickle's command never ran
    assert library.upscale(picture(8, 8), "ESRGAN_4x", scale=4).size == (32, 32)


def test_refresh_sees_added_changed_and_removed_files(tree, tmp_path):
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    lib = UpscalerLibrary({"ESRGAN": [folder]}, CPU, torch.float32)
    assert lib.names() == ["None", "Lanczos", "Nearest"]
    tiny.write_compact(folder / "mine.pth", scale=4)
    assert "mine" not in lib.names()  # the list is what the last scan saw
    lib.refresh()
    assert lib.model_scale("mine") == 4
    lib.upscale(picture(6, 6), "mine", scale=4)
    tiny.write_compact(folder / "mine.pth", scale=2, num_conv=3)  # replaced in place: other size and mtime
    os.utime(folder / "mine.pth", ns=(time.time_ns() + 10**9,) * 2)
    lib.refresh()
    assert lib.model_scale("mine") == 2
    assert lib.upscale(picture(6, 6), "mine").size == (12, 12)
    (folder / "mine.pth").unlink()
    lib.refresh()
    assert "mine" not in lib.names() and lib.loaded() == []


def test_models_are_cached_least_recently_used(tree):
    lib = UpscalerLibrary(dirs(tree), CPU, torch.float32, cache_size=1)
    lib.upscale(picture(6, 6), "R-ESRGAN General 4xV3", scale=4)
    lib.upscale(picture(6, 6), "ESRGAN_4x", scale=4)
    assert lib.loaded() == ["ESRGAN_4x"]
    first = lib.load("ESRGAN_4x")
    assert lib.load("ESRGAN_4x") is first  # served from the cache, not read again
    lib.unload()
    assert lib.loaded() == []


# ----- the upscale loop ------------------------------------------------------------------------------------

def test_x4_model_asked_for_x2_gives_x2(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    image = picture(20, 14)
    with Watch(model) as watch:
        out = engine.upscale_with_model(model, image, scale=2, tile=0)
    assert out.size == (40, 28) and len(watch.shapes) == 1
    expected = direct(model, image).resize((40, 28), Image.Resampling.LANCZOS)
    assert np.abs(pixels(out) - pixels(expected)).max() <= 1


def test_x8_with_a_x4_model_runs_it_twice(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    image = picture(7, 5)
    with Watch(model) as watch:
        out = engine.upscale_with_model(model, image, scale=8, tile=0)
    assert out.size == (56, 40) and [tuple(s) for s in watch.shapes] == [(5, 7), (20, 28)]
    expected = direct(model, direct(model, image)).resize((56, 40), Image.Resampling.LANCZOS)
    assert np.abs(pixels(out) - pixels(expected)).max() <= 1


def test_scale_to_with_crop_is_the_centre_of_the_cover(library):
    image = picture(16, 8)
    cover = library.upscale(image, "R-ESRGAN General 4xV3", size=(32, 32), tile=0)
    cropped = library.upscale(image, "R-ESRGAN General 4xV3", size=(32, 32), crop=True, tile=0)
    assert cover.size == (64, 32) and cropped.size == (32, 32)
    assert np.array_equal(pixels(cropped), pixels(cover)[:, 16:48])


def test_builtins(library):
    image = picture(10, 6)
    assert np.array_equal(pixels(library.upscale(image, "None", scale=4)), pixels(image))
    lanczos = library.upscale(image, "Lanczos", scale=3)
    assert np.array_equal(pixels(lanczos), pixels(image.resize((30, 18), Image.Resampling.LANCZOS)))
    nearest = library.upscale(image, "Nearest", size=(20, 20), crop=True)
    assert np.array_equal(pixels(nearest), pixels(image.resize((33, 20), Image.Resampling.NEAREST))[:, 6:26])


# ----- tiles ---------------------------------------------------------------------------------------------

def test_tiled_equals_untiled_when_the_receptive_field_fits_the_overlap(tree):
    # compact with 2 body convs: 4 3x3 convs, each output pixel sees 4 input pixels around it = overlap / 2
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    image = picture(70, 53, seed=3)
    whole = direct(model, image)
    with Watch(model) as watch:
        tiled = engine.upscale_with_model(model, image, scale=4, tile=24, tile_overlap=8)
    assert len(watch.shapes) == 9
    assert np.abs(pixels(tiled) - pixels(whole)).max() <= 1
    seams = engine.upscale_with_model(model, image, scale=4, tile=24, tile_overlap=0)
    assert np.abs(pixels(seams) - pixels(whole)).max() > 10  # without overlap the tile edges show


class Constant:
    """A descriptor-like x2 model whose output is one flat value per call, alternating dark and light."""
    scale, size_requirements, input_channels = 2, None, 3

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        value = 0.2 if self.calls % 2 else 0.8
        return torch.full((1, 3, x.shape[-2] * 2, x.shape[-1] * 2), value)


def test_neighbouring_tiles_are_cross_faded_not_cut():
    out = pixels(engine.upscale_with_model(Constant(), picture(40, 10), scale=2, tile=20, tile_overlap=8))
    row = out[5, :, 0]
    assert row[0] == 51 and row[-1] == 204
    steps = np.diff(row)
    assert steps.min() >= 0 and steps.max() <= 10  # a 153-level change spread over the 16-pixel ramp
    assert np.count_nonzero((row > 51) & (row < 204)) == 16  # the ramp: overlap x scale pixels


def test_tiles_bound_what_the_model_sees_on_a_large_picture(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    with Watch(model) as watch:
        out = engine.upscale_with_model(model, picture(300, 220), scale=4, tile=64, tile_overlap=8)
    assert out.size == (1200, 880)
    assert len(watch.shapes) == 20 and max(max(s) for s in watch.shapes) <= 64 + 2 * 8


class Nearest2x:
    """A descriptor-like x2 that wants square inputs in multiples of 8: any misplaced or uncropped padding shows."""
    scale, input_channels = 2, 3
    size_requirements = SimpleNamespace(minimum=0, multiple_of=8, square=True)

    def __init__(self):
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


@pytest.mark.parametrize("size, tile", [((37, 21), 16), ((5, 3), 0), ((50, 9), 20)])
def test_padding_for_size_requirements_is_cropped_away(size, tile):
    model, image = Nearest2x(), picture(*size)
    out = engine.upscale_with_model(model, image, scale=2, tile=tile, tile_overlap=4)
    assert np.array_equal(pixels(out), pixels(image.resize((size[0] * 2, size[1] * 2), Image.Resampling.NEAREST)))
    assert all(h == w and h % 8 == 0 for h, w in model.shapes)


@pytest.mark.parametrize("file, size", [("RealESRGAN/RealESRGAN_x2plus.pth", (37, 29)),
                                        ("SwinIR/SwinIR_4x.pth", (45, 18))])
def test_every_tile_meets_the_size_requirements(tree, file, size):
    model = load_image_model(tree / "models" / file)
    rule = model.size_requirements
    assert not rule.none  # x2plus: multiples of 4; SwinIR: at least 16
    with Watch(model) as watch:
        out = engine.upscale_with_model(model, picture(*size), scale=model.scale, tile=16, tile_overlap=3)
    assert out.size == (size[0] * model.scale, size[1] * model.scale) and len(watch.shapes) > 2
    assert all(rule.check(w, h) and max(w, h) <= max(16 + 2 * 3 + rule.multiple_of, rule.minimum)
               for h, w in watch.shapes)


@pytest.mark.parametrize("file", ["RealESRGAN/realesr-general-x4v3.pth", "SwinIR/SwinIR_4x.pth",
                                  "RealESRGAN/RealESRGAN_x2plus.pth"])
def test_a_one_pixel_picture(tree, file):
    model = load_image_model(tree / "models" / file)
    out = engine.upscale_with_model(model, Image.new("RGB", (1, 1), (200, 30, 90)), scale=model.scale)
    assert out.size == (model.scale, model.scale) and out.mode == "RGB"


# ----- out of memory, interrupting, progress --------------------------------------------------------------

class Limited:
    """A descriptor-like wrapper whose forward runs out of memory above `limit` pixels, like a small GPU."""

    def __init__(self, model, limit: int):
        self.model, self.limit, self.seen = model, limit, []
        self.scale, self.size_requirements, self.input_channels = model.scale, model.size_requirements, 3

    def __call__(self, x):
        self.seen.append(x.shape[-1] * x.shape[-2])
        if x.shape[-1] * x.shape[-2] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x)


def test_out_of_memory_halves_the_tile_and_retries(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    image = picture(192, 160, seed=5)
    limited = Limited(model, limit=64 * 56)
    out = engine.upscale_with_model(limited, image, scale=4, tile=0, tile_overlap=8)
    # the whole picture fails, then the first 96px tile (104x88 with its context), then 16 tiles of 48px pass
    assert limited.seen[:2] == [192 * 160, 104 * 88]
    assert len(limited.seen) == 2 + 16 and max(limited.seen[2:]) <= 64 * 56
    assert np.abs(pixels(out) - pixels(direct(model, image))).max() <= 1


def test_out_of_memory_below_the_smallest_tile_is_a_clear_error(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    with pytest.raises(UpscaleError, match="memory"):
        engine.upscale_with_model(Limited(model, limit=10), picture(96, 80), scale=4, tile=64)


def test_should_stop_interrupts_between_tiles(tree):
    model = load_image_model(tree / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")
    seen = []
    with Watch(model) as watch, pytest.raises(UpscaleInterrupted):
        engine.upscale_with_model(model, picture(64, 64), scale=4, tile=16, progress=lambda d, t: seen.append(d),
                                  should_stop=lambda: len(seen) >= 2)
    assert len(watch.shapes) == 2
    assert not issubclass(UpscaleInterrupted, UpscaleError)


def test_progress_counts_tiles_over_all_passes(library):
    seen = []
    library.upscale(picture(20, 20), "R-ESRGAN General 4xV3", scale=8, tile=16,
                    progress=lambda d, t: seen.append((d, t)))
    # pass 1: 20x20 in 16px tiles = 4; pass 2: 80x80 = 25
    assert seen == [(i, 29) for i in range(1, 30)]


# ----- pictures of every mode, precision ---------------------------------------------------------------------

def test_rgba_keeps_its_alpha(library):
    image = picture(12, 9, mode="RGBA")
    out = library.upscale(image, "R-ESRGAN General 4xV3", scale=4, tile=0)
    assert out.mode == "RGBA" and out.size == (48, 36)
    colour = library.upscale(image.convert("RGB"), "R-ESRGAN General 4xV3", scale=4, tile=0)
    assert np.array_equal(pixels(out)[..., :3], pixels(colour))
    alpha = image.getchannel("A").resize((48, 36), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(out)[..., 3], pixels(alpha))


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "L"])
def test_other_modes_are_upscaled_as_the_user_sees_them(library, mode):
    base = picture(10, 8, seed=7)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257), "I;16")
    else:
        image = base.convert(mode)
    out = library.upscale(image, "R-ESRGAN General 4xV3", scale=4, tile=0)
    expected = library.upscale(to_rgb(image), "R-ESRGAN General 4xV3", scale=4, tile=0)
    assert out.mode == "RGB" and np.array_equal(pixels(out), pixels(expected))
    assert pixels(out).std() > 5


def test_precision_choice():
    class Arch:
        supports_half, supports_bfloat16 = True, True
    half_less = type("NoHalf", (), {"supports_half": False, "supports_bfloat16": True})
    cuda = torch.device("cuda")
    assert engine.compute_dtype(Arch, cuda, torch.float16) == torch.float16
    assert engine.compute_dtype(half_less, cuda, torch.float16) == torch.bfloat16
    assert engine.compute_dtype(type("Neither", (), {}), cuda, torch.float16) == torch.float32
    assert engine.compute_dtype(Arch, cuda, torch.float32) == torch.float32  # --no-half
    assert engine.compute_dtype(Arch, CPU, torch.float16) == torch.float32
