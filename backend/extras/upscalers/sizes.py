"""Output sizes, A1111 extras style, and the limits checked before any work starts."""
from __future__ import annotations

import math

from backend.extras.upscalers.errors import UpscaleError

MAX_UPSCALE_SIDE = 16384          # what an 8192 picture at x2 needs; PNG viewers and Pillow cope
MAX_UPSCALE_PIXELS = 100_000_000  # 100 MP: ~300 MB as 8-bit RGB, ~1.2 GB as float32


def check_output_size(width: int, height: int) -> None:
    """Refuse a result too large to make (or an empty one), naming the limit."""
    if width < 1 or height < 1:
        raise UpscaleError(f"the result would be {width}x{height} pixels; ask for at least 1x1")
    if width > MAX_UPSCALE_SIDE or height > MAX_UPSCALE_SIDE:
        raise UpscaleError(
            f"the result would be {width}x{height} pixels; each side may be at most {MAX_UPSCALE_SIDE}. "
            "Ask for a smaller scale or size.")
    if width * height > MAX_UPSCALE_PIXELS:
        raise UpscaleError(
            f"the result would be {width}x{height} ({width * height / 1e6:.0f} megapixels); at most "
            f"{MAX_UPSCALE_PIXELS / 1e6:.0f} megapixels can be made. Ask for a smaller scale or size.")


def resize_plan(width: int, height: int, *, scale: float | None = None, size: tuple[int, int] | None = None,
                crop: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size the picture is upscaled to, size it ends at); they differ only when crop trims the cover size.

    A1111's extras: "scale to" (w, h) scales by max(w/W, h/H), so the picture covers the box with its aspect
    ratio kept; with crop the cover is then center-cropped to exactly (w, h), without it the cover is the result.
    """
    if (scale is None) == (size is None):
        raise UpscaleError("give either a scale (e.g. 2) or a size (width, height), not both and not neither")
    if width < 1 or height < 1:
        raise UpscaleError(f"the picture is {width}x{height}; there is nothing to upscale")
    if size is not None:
        try:
            to_w, to_h = (int(v) for v in size)
        except (TypeError, ValueError):
            raise UpscaleError(f"size must be two whole numbers (width, height), not {size!r}") from None
        if to_w < 1 or to_h < 1:
            raise UpscaleError(f"size must be at least 1x1, not {to_w}x{to_h}")
        scale = max(to_w / width, to_h / height)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise UpscaleError(f"scale must be a positive number, not {scale!r}")
    cover = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size is not None and crop:
        return cover, (to_w, to_h)
    return cover, cover


def target_size(width: int, height: int, *, scale: float | None = None, size: tuple[int, int] | None = None,
                crop: bool = False) -> tuple[int, int]:
    """The size of the result: (round(w*scale), round(h*scale)); scale-to covers (w, h), cropped to it with crop."""
    return resize_plan(width, height, scale=scale, size=size, crop=crop)[1]


def center_box(size: tuple[int, int], final: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop box that keeps the middle of a `size` picture, `final` large (A1111 centers the same way)."""
    left = (size[0] - final[0]) // 2
    top = (size[1] - final[1]) // 2
    return left, top, left + final[0], top + final[1]


def too_large(width: int, height: int) -> bool:
    return width > MAX_UPSCALE_SIDE or height > MAX_UPSCALE_SIDE or width * height > MAX_UPSCALE_PIXELS


def model_passes(width: int, height: int, dest: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """Input size of each model pass, A1111's loop: run the model until the picture is at least `dest`
    (at most 3 passes; at least 1 when dest is the input size, so a 1x or a "scale 1" still runs the model).

    Where a full pass would make a picture beyond the limits (x4 of 4096 on the way to x5), its input is first
    reduced to the smallest size whose output still covers `dest`: A1111 would allocate the whole overshoot.
    """
    passes: list[tuple[int, int]] = []
    w, h = width, height
    for i in range(3):
        if w >= dest[0] and h >= dest[1] and (i > 0 or dest != (width, height)):
            break
        if too_large(w * scale, h * scale):
            w, h = min(w, math.ceil(dest[0] / scale)), min(h, math.ceil(dest[1] / scale))
        passes.append((w, h))
        w, h = w * scale, h * scale
        if scale == 1:
            break
    return passes
