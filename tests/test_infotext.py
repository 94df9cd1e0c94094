"""Infotext: format and parse exactly as A1111 does, read from PNG and EXIF."""
from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image

from backend.images.infotext import (
    USER_COMMENT,
    decode_user_comment,
    encode_user_comment,
    format_infotext,
    parse_infotext,
    read_infotext,
)

PARAMS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Automatic",
    "CFG scale": 7.0,
    "Seed": 1,
    "Size": "512x512",
    "Model hash": "0123456789",
    "Model": "v1-5",
    "Version": "v1.10.1",
}

# Copied in shape from a PNG that A1111 1.10 wrote (hires fix, LoRA, embedding).
A1111_TEXT = (
    "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:detail:0.8>\n"
    "city street at night\n"
    "Negative prompt: (worst quality:1.4), lowres, easynegative\n"
    "bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3360545612, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.7, Clip skip: 2, Hires upscale: 2, Hires steps: 10, "
    "Hires upscaler: Latent, "
    'Lora hashes: "detail: 0123456789ab, other: ba9876543210", '
    'TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def test_format_matches_a1111_layout():
    text = format_infotext("a cat", "blurry", PARAMS)
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model hash: 0123456789, Model: v1-5, Version: v1.10.1"
    )


def test_format_skips_empty_negative_and_none_values():
    text = format_infotext("a cat", "", {"Steps": 20, "Clip skip": None, "Seed": 5})
    assert text == "a cat\nSteps: 20, Seed: 5"


def test_format_floats_like_a1111():
    text = format_infotext("p", "", {"CFG scale": 7.0, "Denoising strength": 0.7, "Eta": 1e-05})
    assert text.splitlines()[-1] == "CFG scale: 7, Denoising strength: 0.7, Eta: 1e-05"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("line1\nline2", '"line1\\nline2"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("héllo, wörld", '"héllo, wörld"'),  # ensure_ascii=False
        ("plain", "plain"),
    ],
)
def test_values_with_separators_are_json_quoted(value, written):
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Key": value})
    assert text.splitlines()[-1] == f"Steps: 1, Seed: 2, Key: {written}"
    assert parse_infotext(text)["Key"] == value


def test_parse_real_a1111_text():
    res = parse_infotext(A1111_TEXT)
    assert res["Prompt"] == (
        "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:detail:0.8>\n"
        "city street at night"
    )
    assert res["Negative prompt"] == "(worst quality:1.4), lowres, easynegative\nbad hands"
    assert res["Steps"] == "28"
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert res["CFG scale"] == "6.5"
    assert res["Seed"] == "3360545612"
    assert (res["Size"], res["Size-1"], res["Size-2"]) == ("512x768", "512", "768")
    assert res["Model hash"] == "6ce0161689"
    assert res["Model"] == "v1-5-pruned-emaonly"
    assert res["Denoising strength"] == "0.7"
    assert res["Clip skip"] == "2"
    assert res["Hires upscale"] == "2"
    assert res["Hires steps"] == "10"
    assert res["Hires upscaler"] == "Latent"
    assert res["Lora hashes"] == "detail: 0123456789ab, other: ba9876543210"
    assert res["TI hashes"] == "easynegative: c74b4e810b03"
    assert res["Version"] == "v1.10.1"


def test_round_trip_format_parse():
    prompt = "a cat\nwearing a hat, (red:1.3)"
    negative = "blurry\nugly, bad: anatomy"
    params = {**PARAMS, "Lora hashes": "a: 0123456789ab, b: ba9876543210"}
    res = parse_infotext(format_infotext(prompt, negative, params))
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    for key, value in params.items():
        expected = "7" if key == "CFG scale" else str(value)
        assert res[key] == expected


def test_parse_without_negative_prompt():
    res = parse_infotext("a cat\nSteps: 20, Sampler: Euler, Seed: 3")
    assert res["Prompt"] == "a cat"
    assert res["Negative prompt"] == ""
    assert res["Sampler"] == "Euler"


def test_last_line_that_is_not_parameters_is_prompt():
    text = "portrait, style: oil\nsunset, mood: calm"
    res = parse_infotext(text)
    assert res == {"Prompt": text, "Negative prompt": ""}


def test_prompt_only_and_empty_text():
    assert parse_infotext("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}


def test_parameters_only():
    res = parse_infotext("Steps: 20, Sampler: Euler a, Seed: 9")
    assert res["Prompt"] == ""
    assert res["Seed"] == "9"


def _with_user_comment(raw: bytes, fmt: str) -> Image.Image:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[USER_COMMENT] = raw
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, fmt, exif=exif)
    buf.seek(0)
    return Image.open(buf)


def test_user_comment_is_big_endian_unicode_like_piexif():
    assert encode_user_comment("Hi") == b"UNICODE\x00\x00H\x00i"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize(
    "raw",
    [
        b"UNICODE\0" + "a cat, 猫\nSteps: 20".encode("utf-16-be"),
        b"UNICODE\0" + "a cat, 猫\nSteps: 20".encode("utf-16-le"),
    ],
)
def test_read_exif_user_comment_both_byte_orders(raw, fmt):
    assert read_infotext(_with_user_comment(raw, fmt)) == "a cat, 猫\nSteps: 20"


def test_read_exif_ascii_user_comment():
    img = _with_user_comment(b"ASCII\0\0\0a dog\nSteps: 5", "JPEG")
    assert read_infotext(img) == "a dog\nSteps: 5"


def test_decode_user_comment_plain_ascii_text_in_utf16():
    # Mostly-ASCII text whose first char is not ASCII still decodes right.
    for codec in ("utf-16-be", "utf-16-le"):
        raw = b"UNICODE\0" + "Ünïcode prompt, steps".encode(codec)
        assert decode_user_comment(raw) == "Ünïcode prompt, steps"


def test_read_png_parameters_chunk_and_none_without():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    buf.seek(0)
    assert read_infotext(Image.open(buf)) == A1111_TEXT

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    buf.seek(0)
    assert read_infotext(Image.open(buf)) is None
    assert read_infotext(Image.new("RGB", (4, 4))) is None
