"""A1111's img2img resize modes: how an input picture becomes width x height."""
from __future__ import annotations

from typing import Literal

from PIL import Image

ResizeMode = Literal["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
RESIZE_MODES: tuple[str, ...] = ResizeMode.__args__  # type: ignore[attr-defined]
LATENT_RESIZE = "Just resize (latent upscale)"

_LANCZOS = Image.Resampling.LANCZOS


def resize_image(image: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """`image` as a width x height picture by `mode` (the latent mode resizes pixels here too)."""
    if image.size == (width, height):
        return image.copy()
    if mode in ("Just resize", LATENT_RESIZE):
        return image.resize((width, height), _LANCZOS)
    if mode == "Crop and resize":  # cover the target, cut the overflow evenly
        scale = max(width / image.width, height / image.height)
        w, h = max(round(image.width * scale), width), max(round(image.height * scale), height)
        scaled = image.resize((w, h), _LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    if mode == "Resize and fill":  # fit inside, then stretch the edge pixels into the bands
        scale = min(width / image.width, height / image.height)
        w, h = max(round(image.width * scale), 1), max(round(image.height * scale), 1)
        scaled = image.resize((w, h), _LANCZOS)
        canvas = Image.new(image.mode, (width, height))
        left, top = (width - w) // 2, (height - h) // 2
        canvas.paste(scaled, (left, top))
        if left > 0:
            canvas.paste(scaled.crop((0, 0, 1, h)).resize((left, h)), (0, top))
            right = width - left - w
            canvas.paste(scaled.crop((w - 1, 0, w, h)).resize((right, h)), (left + w, top))
        if top > 0:
            canvas.paste(scaled.crop((0, 0, w, 1)).resize((w, top)), (left, 0))
            bottom = height - top - h
            canvas.paste(scaled.crop((0, h - 1, w, h)).resize((w, bottom)), (left, top + h))
        return canvas
    raise ValueError(f"unknown resize mode {mode!r}; choose one of: {', '.join(RESIZE_MODES)}")


def size_by_factor(image: Image.Image, factor: float) -> tuple[int, int]:
    """A1111's "Resize by": the input size times `factor`, rounded down to multiples of 8."""
    return max(int(image.width * factor) // 8 * 8, 8), max(int(image.height * factor) // 8 * 8, 8)
