"""A1111 "infotext": the generation parameters stored in an image.

The text looks like this (prompt lines, optional negative prompt lines, one
parameter line):

    a cat, best quality
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512

Other tools read A1111 images and A1111 reads ours, so the layout, quoting and
parsing follow A1111's `create_infotext` / `parse_generation_parameters`.
"""
from __future__ import annotations

import json
import re
import struct

from PIL import ExifTags, Image

NEGATIVE_PREFIX = "Negative prompt:"

# Same pattern as A1111: a key, then either a JSON string (with escapes) or
# anything up to the next comma.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

USER_COMMENT = 0x9286  # EXIF UserComment, where A1111 puts infotext in JPEG/WebP
_EXIF_IFD_POINTER = 0x8769
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"


def _value_text(value: object) -> str:
    # A1111 writes CFG 7.0 as "7"; keep other floats short ("0.7", not "0.70").
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(value: object) -> str:
    """JSON-quote a value that would otherwise break the `Key: value, ...` line."""
    text = _value_text(value)
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """Build the infotext the way A1111 does; None values are left out."""
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_params_line(line: str) -> dict[str, str]:
    """`Key: value, Key: "quoted, value", ...` -> {key: value}; also A1111's "extras" chunk."""
    result: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(line):
        value = unquote(value.strip())
        result[key] = value
        size = _RE_IMAGESIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def parse_infotext(text: str) -> dict[str, str]:
    """Inverse of format_infotext; also reads infotext written by A1111 itself.

    Returns "Prompt", "Negative prompt" and every parameter as a string. A
    `WxH` value such as Size also gives "Size-1" and "Size-2".
    """
    *lines, last = text.strip().split("\n")
    # A last line with fewer than 3 parameters is part of the prompt (A1111 rule):
    # a prompt like "masterpiece, style: oil" must not turn into parameters.
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)

    result = parse_params_line(last)
    result["Prompt"] = "\n".join(prompt)
    result["Negative prompt"] = "\n".join(negative)
    return result


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as A1111 (piexif, encoding="unicode") writes them."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def user_comment_exif(text: str) -> bytes:
    """A minimal EXIF block (for JPEG/WebP `exif=`) holding only UserComment.

    Built by hand because Pillow's Image.Exif stores bytes in the Exif sub-IFD
    as type BYTE; the spec (and piexif, which A1111 reads with) want UNDEFINED,
    and A1111 fails on a BYTE UserComment.
    """
    comment = encode_user_comment(text)
    entry = ">HHII"  # tag, type, count, value-or-offset
    exif_ifd_at = 8 + 2 + 12 + 4  # after header and IFD0 (one entry, next=0)
    comment_at = exif_ifd_at + 2 + 12 + 4  # after the Exif IFD (one entry)
    return (
        b"Exif\0\0"
        + b"MM\0\x2a" + struct.pack(">I", 8)  # big-endian TIFF header
        + struct.pack(">H", 1) + struct.pack(entry, _EXIF_IFD_POINTER, 4, 1, exif_ifd_at)
        + struct.pack(">I", 0)
        + struct.pack(">H", 1) + struct.pack(entry, USER_COMMENT, 7, len(comment), comment_at)
        + struct.pack(">I", 0)
        + comment  # always > 4 bytes (8-byte prefix), so it lives at the offset
    )


def decode_user_comment(data: bytes | str) -> str:
    if isinstance(data, str):  # some writers store it as an ASCII-typed tag
        return data.rstrip("\0")
    if data.startswith(_UNICODE_PREFIX):
        body = data[len(_UNICODE_PREFIX):]
        return body.decode(_utf16_codec(body), errors="replace").rstrip("\0")
    if data.startswith(_ASCII_PREFIX):
        return data[len(_ASCII_PREFIX):].decode("ascii", errors="replace").rstrip("\0")
    # Unknown or undefined prefix: best effort, as A1111 falls back to utf-8.
    return data.lstrip(b"\0").decode("utf-8", errors="ignore").rstrip("\0")


def _utf16_codec(body: bytes) -> str:
    # The EXIF spec leaves the byte order open. piexif writes big-endian; some
    # tools write little-endian. Use a BOM if there is one, else guess from
    # where the zero bytes sit (ASCII text is half zeros).
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16"
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    return "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"


def read_infotext(image: Image.Image) -> str | None:
    """The infotext stored in an image, or None if it has none."""
    text = image.info.get("parameters")
    if isinstance(text, str) and text:
        return text
    try:
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(USER_COMMENT)
    except Exception:  # broken EXIF must not stop the image from opening
        return None
    if not comment:
        return None
    return decode_user_comment(comment) or None
