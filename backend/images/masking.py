"""Mask geometry and pixel work for inpainting and outpainting.

White (255) in a mask means "change this"; black means "keep". The blurred
mask is the alpha used to paste a result over the input, so pixels the blur
does not reach stay the input's own pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

# Radii for filling a masked area from its surroundings, coarse to fine.
_FILL_RADII = (256, 64, 16, 4, 2)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask.copy()


def is_empty(mask: Image.Image) -> bool:
    return mask.getbbox() is None


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The mask's bounding box grown by `padding` pixels, inside the image; None if empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - padding, 0), max(y1 - padding, 0),
            min(x2 + padding, mask.width), min(y2 + padding, mask.height))


def match_aspect(box: tuple[int, int, int, int], target: tuple[int, int],
                 bounds: tuple[int, int]) -> tuple[int, int, int, int]:
    """Grow `box` to the aspect ratio of `target` (w, h), staying inside `bounds`.

    "Only masked" renders the crop at the request's width x height; growing the
    crop (rather than stretching it) keeps the picture's proportions.
    """
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    want = target[0] / target[1]
    if width / height < want:  # too narrow: widen
        grow = round(height * want) - width
        x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
    else:  # too flat: heighten
        grow = round(width / want) - height
        y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
    limit_w, limit_h = bounds
    # Slide back inside the image; clip only if the box is larger than the image.
    if x1 < 0:
        x1, x2 = 0, x2 - x1
    if x2 > limit_w:
        x1, x2 = x1 - (x2 - limit_w), limit_w
    if y1 < 0:
        y1, y2 = 0, y2 - y1
    if y2 > limit_h:
        y1, y2 = y1 - (y2 - limit_h), limit_h
    return max(x1, 0), max(y1, 0), min(x2, limit_w), min(y2, limit_h)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked area by colours spread in from around it ("fill").

    Normalised blur: blur(colour x weight) / blur(weight), where weight is 1
    on kept pixels. Large radii give the overall colour, small radii bring in
    the nearby one; kept pixels are left exactly as they were.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = 1.0 - np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    if keep.max() <= 0:  # nothing to spread from: leave the picture as it is
        return image.convert("RGB")
    result = np.broadcast_to((rgb * keep).sum((0, 1)) / keep.sum(), rgb.shape).copy()
    for radius in _FILL_RADII:
        colour_sum = _blur_array(rgb * keep, radius)
        weight = _blur_array(keep, radius)
        estimate = colour_sum / np.maximum(weight, 1e-6)
        alpha = np.clip(weight * 4.0, 0.0, 1.0)  # trust the estimate where enough kept pixels are near
        result = result * (1.0 - alpha) + estimate * alpha
    result = rgb * keep + result * (1.0 - keep)
    return Image.fromarray(np.clip(result + 0.5, 0, 255).astype(np.uint8), "RGB")


def _blur_array(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWxC float array with zero padding.

    Zero padding is right for the normalised blur in `fill_masked`: colour
    and weight lose the same share at the border, so their ratio stays true.
    """
    height, width = array.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(1)
    for axis, length in ((2, height), (3, width)):
        half = min(int(3 * sigma), length - 1)
        offsets = torch.arange(-half, half + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, -1, 1) if axis == 2 else (kernel / kernel.sum()).view(1, 1, 1, -1)
        padding = (half, 0) if axis == 2 else (0, half)
        x = torch.nn.functional.conv2d(x, kernel, padding=padding)
    return x.squeeze(1).numpy().transpose(1, 2, 0)


def paste_over(original: Image.Image, result: Image.Image, alpha: Image.Image) -> Image.Image:
    """`result` where `alpha` is white, `original` where black, blended between."""
    return Image.composite(result.convert("RGB"), original.convert("RGB"), alpha.convert("L"))


def pad_for_outpaint(image: Image.Image, left: int, right: int, up: int, down: int,
                     overlap: int) -> tuple[Image.Image, Image.Image]:
    """A larger canvas with the picture in place, its new border filled, and the mask.

    The new area is filled with the picture's colours spread outwards
    (`fill_masked`), so sampling continues what it sees rather than starting
    from black. The mask covers the new area plus `overlap` pixels into the
    picture on each extended side, so the seam is repainted too.
    """
    width, height = image.width + left + right, image.height + up + down
    canvas = ImageOps.expand(image.convert("RGB"), border=(left, up, right, down))
    inside = (left, up, left + image.width, up + image.height)
    new_area = Image.new("L", (width, height), 255)
    new_area.paste(0, inside)
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (inside[0] + (overlap if left else 0), inside[1] + (overlap if up else 0),
                   inside[2] - (overlap if right else 0), inside[3] - (overlap if down else 0)))
    return fill_masked(canvas, new_area), mask
