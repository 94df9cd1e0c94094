"""Pictures users give us, in every awkward form: each becomes RGB or is refused with a clear message."""
from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.images.loading import ImageInputError, decode_base64_image, open_image, to_mask


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_rgba_is_flattened_onto_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 4, 8))  # transparent half
    rgb = open_image(encoded(image))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((7, 0)) == (255, 0, 0)


def test_la_p_and_cmyk_become_rgb():
    la = Image.new("LA", (4, 4), (100, 255))
    assert open_image(encoded(la)).getpixel((0, 0)) == (100, 100, 100)
    palette = Image.new("P", (4, 4), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 200, 100, 50] + [0] * 744)
    assert open_image(encoded(palette)).getpixel((1, 1)) == (200, 100, 50)
    palette.info["transparency"] = 3
    assert open_image(encoded(palette, transparency=3)).getpixel((1, 1)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red
    assert open_image(encoded(cmyk, "JPEG", quality=100)).getpixel((1, 1))[0] > 200


def test_16_bit_greyscale_is_scaled_not_clipped():
    array = np.full((4, 4), 32768, dtype=np.uint16)
    image = Image.fromarray(array, "I;16")
    value = open_image(encoded(image)).getpixel((0, 0))
    assert 120 <= value[0] <= 135  # half of the 16-bit range is mid-grey, not white


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = open_image(encoded(image, "JPEG", exif=exif.tobytes()))
    assert upright.size == (10, 20)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    first = open_image(buffer.getvalue())
    assert first.getpixel((2, 2))[0] > 200 and first.getpixel((2, 2))[2] < 50


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height: what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 9000])
def test_decompression_bombs_are_refused_before_decoding(side):
    started = time.perf_counter()
    with pytest.raises(ImageInputError, match="too large|megapixels"):
        open_image(_png_header_only(side, side))
    assert time.perf_counter() - started < 5  # refused from the header, nothing was decoded


def test_truncated_and_non_images_are_refused_clearly():
    whole = encoded(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageInputError, match="damaged or truncated"):
        open_image(whole[: len(whole) // 2])
    with pytest.raises(ImageInputError, match="not an image"):
        open_image(b"hello, not a picture")


def test_base64_with_data_url_prefix_and_bad_input():
    data = base64.b64encode(encoded(Image.new("RGB", (4, 4), (1, 2, 3)))).decode()
    assert decode_base64_image(data).getpixel((0, 0)) == (1, 2, 3)
    assert decode_base64_image("data:image/png;base64," + data).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ImageInputError, match="URL"):
        decode_base64_image("http://127.0.0.1/x.png")
    with pytest.raises(ImageInputError):
        decode_base64_image("")


def test_masks_read_alpha_of_painted_layers_and_brightness_otherwise():
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 4, 8))
    mask = to_mask(layer)
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((6, 1)) == 0
    grey = Image.new("RGB", (8, 8), (255, 255, 255))
    assert to_mask(grey, (16, 16)).size == (16, 16)
