"""Mask helpers shared by the SAM tab and the /sam API: grow/shrink, feather, the overlay, the cut-out, picking.

Pure numpy and PIL. A mask is a bool (H, W) array, or a PIL image / uint8
array where white (> 127) is inside; helpers that can use softness (blend,
cut-out) read an "L" mask's grey levels as partial coverage.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from backend.extras.segment.common import Segment, SegmentError

OVERLAY_COLOR = (30, 144, 255)  # segment-anything's demo blue, the extension's first overlay colour


def as_bool(mask: np.ndarray | Image.Image) -> np.ndarray:
    """A bool (H, W) array from a bool/uint8 array or a PIL mask (white = inside)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L")) > 127
    array = np.asarray(mask)
    if array.ndim == 3:  # an RGB(A) mask picture
        array = array[..., 0]
    return array if array.dtype == bool else array > (127 if array.dtype == np.uint8 else 0.5)


def _coverage(mask: np.ndarray | Image.Image) -> np.ndarray:
    """Float (H, W) in [0, 1]: grey levels of an L mask count as partial coverage."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    array = np.asarray(mask)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return as_bool(array).astype(np.float32)


def _same_size(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    if mask.shape[:2] != (image.height, image.width):
        raise SegmentError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the picture is "
                           f"{image.width}x{image.height}")
    return mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a disk of `radius` pixels: for each row offset, a 1-D window from running sums."""
    height, width = mask.shape
    padded = np.pad(mask, radius)  # outside the picture counts as not masked
    sums = np.zeros((padded.shape[0], padded.shape[1] + 1), dtype=np.int32)
    np.cumsum(padded, axis=1, out=sums[:, 1:])
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        rows = sums[radius + dy: radius + dy + height]
        right = rows[:, radius + half + 1: radius + half + 1 + width]
        out |= (right - rows[:, radius - half: radius - half + width]) > 0
    return out


def grow_mask(mask: np.ndarray | Image.Image, pixels: int) -> np.ndarray:
    """A bool mask grown by `pixels` (positive: dilate) or shrunk (negative: erode) with a round brush.

    Shrinking does not eat in from the picture's edges: a mask that touches the
    border keeps touching it, as a subject cut by the frame should.
    """
    mask = as_bool(mask)
    radius = min(abs(int(pixels)), max(mask.shape))
    if radius == 0:
        return mask.copy()
    return _dilate(mask, radius) if pixels > 0 else ~_dilate(~mask, radius)


def feather_mask(mask: np.ndarray | Image.Image, radius: float) -> Image.Image:
    """An "L" mask with its edge blurred over about `radius` pixels (0: a hard 0/255 mask)."""
    image = Image.fromarray(as_bool(mask).astype(np.uint8) * 255, "L")
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else image


def blend_mask(image: Image.Image, mask: np.ndarray | Image.Image, color: Sequence[int] = OVERLAY_COLOR,
               alpha: float = 0.5) -> Image.Image:
    """The picture with the mask tinted in `color` at `alpha` opacity: what the user sees after a click."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (_same_size(image, _coverage(mask)) * float(alpha))[..., None]
    tinted = rgb * (1.0 - weight) + np.asarray(color[:3], dtype=np.float32) * weight
    return Image.fromarray(np.clip(tinted + 0.5, 0, 255).astype(np.uint8), "RGB")


def masked_image(image: Image.Image, mask: np.ndarray | Image.Image) -> Image.Image:
    """RGBA cut-out, as the extension makes it: the picture inside the mask, transparent black outside."""
    rgb = np.asarray(image.convert("RGB"))
    coverage = np.clip(_same_size(image, _coverage(mask)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = np.zeros((*rgb.shape[:2], 4), dtype=np.uint8)
    inside = coverage > 0
    out[inside, :3] = rgb[inside]
    out[..., 3] = coverage
    return Image.fromarray(out, "RGBA")


def pick_segment(segments: Sequence[Segment], x: float, y: float) -> int | None:
    """Index of the segment under (x, y); where segments overlap, the smallest (the most specific part)."""
    best, best_area = None, None
    for index, segment in enumerate(segments):
        height, width = segment.mask.shape
        col, row = math.floor(x), math.floor(y)
        if not (0 <= col < width and 0 <= row < height) or not segment.mask[row, col]:
            continue
        if best_area is None or segment.area < best_area:
            best, best_area = index, segment.area
    return best
