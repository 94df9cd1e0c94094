"""Pictures of any mode in and out of the engine, which works on 8-bit RGB (+ alpha kept aside)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from backend.extras.upscalers.errors import UpscaleError
from backend.images.loading import MAX_INPUT_PIXELS, ImageInputError, to_rgb

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(8-bit RGB colour, alpha as L or None), upright as the user sees it; 16-bit, CMYK, palette... converted."""
    try:
        if not has_alpha(image):
            return to_rgb(image, "the picture"), None
    except ImageInputError as exc:
        raise UpscaleError(str(exc)) from None
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise UpscaleError(f"the picture is {image.width}x{image.height}; pictures up to "
                           f"{MAX_INPUT_PIXELS / 1e6:.0f} megapixels can be upscaled")
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    rgba = ImageOps.exif_transpose(image).convert("RGBA")
    # The colour is not flattened onto a background: the alpha goes back on, so the colour under it must stay.
    return rgba.convert("RGB"), rgba.getchannel("A")


def to_array(rgb: Image.Image, alpha: Image.Image | None, channels: int) -> np.ndarray:
    """H x W x channels uint8 for a model taking 1 (grey), 3 (RGB) or 4 (RGBA) channels."""
    if channels == 3:
        return np.array(rgb)  # a writable copy: torch refuses to wrap Pillow's read-only buffer quietly
    if channels == 1:
        return np.array(rgb.convert("L"))[:, :, None]
    if channels == 4:
        a = alpha if alpha is not None else Image.new("L", rgb.size, 255)
        return np.dstack([np.asarray(rgb), np.asarray(a)])
    raise UpscaleError(f"the model takes {channels}-channel pictures; only 1, 3 or 4 channels can be upscaled")


def from_array(array: np.ndarray) -> tuple[Image.Image, Image.Image | None]:
    """(RGB, alpha or None) from a model's H x W x C output."""
    channels = array.shape[2]
    if channels == 1:
        return Image.fromarray(array[:, :, 0], "L").convert("RGB"), None
    if channels == 3:
        return Image.fromarray(np.ascontiguousarray(array), "RGB"), None
    if channels == 4:
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB"), Image.fromarray(
            np.ascontiguousarray(array[:, :, 3]), "L")
    raise UpscaleError(f"the model gave a {channels}-channel picture; only 1, 3 or 4 channels can be read")


def finish(rgb: Image.Image, alpha: Image.Image | None, size: tuple[int, int], box: tuple[int, int, int, int] | None,
           resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Resize colour (and alpha) to `size`, crop to `box`, put the alpha back: RGB or RGBA out."""
    if rgb.size != size:
        rgb = rgb.resize(size, resample)
    if alpha is not None:
        if alpha.size != size:
            alpha = alpha.resize(size, resample)
        rgb = rgb.copy()
        rgb.putalpha(alpha)
    return rgb.crop(box) if box is not None and box != (0, 0) + size else rgb
