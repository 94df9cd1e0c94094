"""Open the images users give us (uploads, API base64, batch folders) safely.

Whatever arrives becomes a plain 8-bit RGB picture (or an L mask) the size the
user sees: EXIF rotation applied, the first frame of an animation, alpha
flattened onto a background as A1111 does. Files that would eat the machine
(decompression bombs) or cannot be decoded (truncated) raise `ImageInputError`
with a message a user can act on; nothing is decoded before its size is checked.
"""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 8192 x 8192: far above anything a checkpoint can use, far below what hurts.
MAX_INPUT_PIXELS = 8192 * 8192
BACKGROUND = (255, 255, 255)  # A1111's img2img_background_color default


class ImageInputError(ValueError):
    """An input image we refuse, with the reason in words."""


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise ImageInputError(
            f"{what} is {width}x{height} ({width * height / 1e6:.0f} megapixels); images up to "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} megapixels are accepted. Scale it down first.")


def open_image(source: bytes | str | Path, what: str = "the image") -> Image.Image:
    """Decode an uploaded file or bytes into an RGB image, refusing bombs and broken files."""
    return to_rgb(_decode(source, what), what)


def open_mask(source: bytes | str | Path, what: str = "the mask") -> Image.Image:
    """Decode a mask file as it is (alpha kept: `to_mask` reads it)."""
    return _decode(source, what)


def _decode(source: bytes | str | Path, what: str) -> Image.Image:
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageInputError(f"cannot read {what}: {exc.strerror or exc}") from None
    with stream:
        try:
            # Pillow's own bomb check raises only far above our limit; ours runs
            # on the header, before any pixel is decoded.
            image = Image.open(stream)
        except Image.DecompressionBombError:
            raise ImageInputError(f"{what} is too large to open safely (decompression bomb check)") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageInputError(f"{what} is not an image file Pillow can read (PNG, JPEG, WebP, GIF, ...)") from None
        _check_pixels(image.width, image.height, what)
        try:
            image.load()  # the first frame of an animation
            # Detach from the file (closed below); info, with EXIF, comes along.
            return image.copy()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"{what} is damaged or truncated and cannot be decoded ({exc})") from None


def decode_base64_image(data: str, what: str = "the image") -> Image.Image:
    """An A1111 API image: base64, with or without a `data:image/...;base64,` prefix."""
    return open_image(base64_payload(data, what), what)


def decode_base64_mask(data: str, what: str = "the mask") -> Image.Image:
    return open_mask(base64_payload(data, what), what)


def base64_payload(data: str, what: str) -> bytes:
    """The bytes of an A1111 API image field (a URL is refused here: see images/remote.py)."""
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ImageInputError(f"{what} is a URL; send the image itself, base64-encoded")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{what} is not valid base64") from None
    if not raw:
        raise ImageInputError(f"{what} is empty")
    return raw


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale ("I;16", "I", "F") scaled into 0..255, not clipped."""
    array = np.asarray(image, dtype=np.float64)
    high = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        high = max(float(array.max(initial=0)), 1.0)
    return Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _upright_8bit(image: Image.Image, what: str) -> Image.Image:
    """First frame, EXIF rotation applied, 16-bit/float greyscale brought to 8 bits."""
    _check_pixels(image.width, image.height, what)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    return image


def to_rgb(image: Image.Image, what: str = "the image") -> Image.Image:
    """An RGB copy: upright, first frame, alpha flattened onto white, any bit depth."""
    image = _upright_8bit(image, what)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def to_mask(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """An L mask (white = change): from alpha where the image has alpha, else its brightness.

    A painted layer from the browser is transparent where nothing was painted,
    so its alpha is the mask; an uploaded black/white mask has no alpha.
    A mask of another size is stretched to `size`, as A1111 does.
    """
    image = _upright_8bit(image, "the mask")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") and image.getchannel("A").getextrema() != (255, 255):
        mask = image.getchannel("A")
    else:
        mask = image.convert("L")
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    return mask
