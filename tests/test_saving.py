"""Saving images: counter names, patterns, infotext in every format, atomic writes."""
from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from backend.images.infotext import (
    USER_COMMENT,
    format_infotext,
    parse_infotext,
    read_infotext,
)
from backend.images.saving import FilenameTags, date_subdir, format_filename, save_image

WHEN = datetime(2026, 11, 3, 14, 5, 9)
INFOTEXT = format_infotext(
    "a cat in a hat, (red:1.2)\nsecond line, 猫",
    "blurry, lowres",
    {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 1234, "Size": "64x48",
     "Model hash": "0123456789", "Model": "v1-5", "Lora hashes": "a: 0123456789ab, b: ff00"},
)


def _image(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (64, 48), "red" if mode in ("RGB", "RGBA") else 0)


def _tags(**kw) -> FilenameTags:
    return FilenameTags(**{"seed": 1234, "prompt": "a cat in a hat", "when": WHEN, **kw})


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_default_name_and_creates_directory(tmp_path):
    out = tmp_path / "outputs" / "txt2img-images"
    path = save_image(_image(), out, infotext=INFOTEXT, tags=_tags())
    assert path == out / "00000-1234.png"
    assert _names(out) == ["00000-1234.png"]


@pytest.mark.parametrize("fmt", ["png", "jpg", "jpeg", "webp"])
def test_round_trip_infotext(tmp_path, fmt):
    path = save_image(_image(), tmp_path, infotext=INFOTEXT, fmt=fmt, tags=_tags())
    assert path.suffix == f".{fmt}"
    with Image.open(path) as img:
        assert img.size == (64, 48)
        text = read_infotext(img)
    assert text == INFOTEXT
    assert parse_infotext(text) == parse_infotext(INFOTEXT)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_exif_user_comment_is_unicode_big_endian(tmp_path, fmt):
    path = save_image(_image(), tmp_path, infotext="hi", fmt=fmt, tags=_tags())
    with Image.open(path) as img:
        raw = img.getexif().get_ifd(ExifTags.IFD.Exif)[USER_COMMENT]
        blob = img.info["exif"]
    assert raw == b"UNICODE\0" + "hi".encode("utf-16-be")
    # Tag 0x9286 with type 7 (UNDEFINED), as the EXIF spec and piexif want;
    # A1111's reader fails on type BYTE, which Pillow's Image.Exif would write.
    assert b"\x92\x86\x00\x07" in blob


def test_jpeg_converts_rgba(tmp_path):
    path = save_image(_image("RGBA"), tmp_path, infotext=INFOTEXT, fmt="jpg", tags=_tags())
    with Image.open(path) as img:
        assert img.mode == "RGB"
        assert read_infotext(img) == INFOTEXT


def test_webp_keeps_alpha(tmp_path):
    clear = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    path = save_image(clear, tmp_path, infotext="x", fmt="webp", tags=_tags())
    with Image.open(path) as img:
        assert img.mode == "RGBA"
        assert img.getpixel((0, 0))[3] == 0


def test_jpeg_quality_changes_size(tmp_path):
    noisy = Image.effect_noise((128, 128), 64).convert("RGB")
    low = save_image(noisy, tmp_path, infotext="", fmt="jpg", tags=_tags(), jpeg_quality=10)
    high = save_image(noisy, tmp_path, infotext="", fmt="jpg", tags=_tags(), jpeg_quality=95)
    assert low.stat().st_size < high.stat().st_size


def test_counter_increments_and_survives_gaps(tmp_path):
    first = save_image(_image(), tmp_path, infotext="", tags=_tags())
    second = save_image(_image(), tmp_path, infotext="", tags=_tags(seed=5))
    assert (first.name, second.name) == ("00000-1234.png", "00001-5.png")
    (tmp_path / "00007-old.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not numbered")
    (tmp_path / "00001-5.png").unlink()  # a gap below the highest number
    third = save_image(_image(), tmp_path, infotext="", tags=_tags())
    assert third.name == "00008-1234.png"


def test_counter_beyond_five_digits(tmp_path):
    (tmp_path / "99999-x.png").write_bytes(b"x")
    assert save_image(_image(), tmp_path, infotext="", tags=_tags()).name == "100000-1234.png"


def test_parallel_saves_get_distinct_numbers(tmp_path):
    paths: list[Path] = []
    errors: list[BaseException] = []

    def worker(n):
        try:
            for _ in range(5):
                paths.append(save_image(_image(), tmp_path, infotext="", tags=_tags(seed=n)))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    assert numbers == list(range(40))
    assert len(_names(tmp_path)) == 40


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_failed_encoding_leaves_nothing(tmp_path, fmt):
    save_image(_image(), tmp_path, infotext="", tags=_tags())
    before = _names(tmp_path)
    # Mode "F" (32-bit float) cannot be encoded as JPEG or PNG; WebP converts
    # it, so make that one fail through an out-of-range quality instead.
    bad = Image.new("F", (64, 48)) if fmt != "webp" else _image()
    with pytest.raises((OSError, ValueError)):
        save_image(bad, tmp_path, infotext=INFOTEXT, fmt=fmt, tags=_tags(),
                   jpeg_quality=-5 if fmt == "webp" else 80)
    assert _names(tmp_path) == before


def test_unsupported_format(tmp_path):
    with pytest.raises(ValueError, match="gif"):
        save_image(_image(), tmp_path, infotext="", fmt="gif", tags=_tags())
    assert _names(tmp_path) == []


def test_pattern_tags(tmp_path):
    tags = _tags(
        prompt="a cat, in a hat", negative_prompt="blurry", model_name="v1-5",
        model_hash="0123456789", sampler="Euler a", scheduler="Karras", steps=20, cfg=7.0,
        width=512, height=768, job_timestamp=datetime(2026, 1, 2, 3, 4, 5), batch_number=2,
        styles=["anime", "cinematic"],
    )
    pattern = ("[seed] [prompt] [prompt_spaces] [prompt_words] [prompt_no_styles] "
               "[negative_prompt] [model_name] [model_hash] [sampler] [scheduler] [steps] "
               "[cfg] [width] [height] [date] [datetime] [job_timestamp] [batch_number] "
               "[styles] [datetime<%Y>] [nope]")
    # One tag at a time: all together would pass the 150-character cap.
    parts = [format_filename(tag, tags) for tag in pattern.split()]
    assert parts == [
        "1234", "a_cat,_in_a_hat", "a cat, in a hat", "a cat in a hat", "a_cat,_in_a_hat",
        "blurry", "v1-5", "0123456789", "Euler a", "Karras", "20", "7", "512", "768",
        "2026-11-03", "20261103140509", "20260102030405", "2", "anime, cinematic", "2026",
        "[nope]",
    ]
    path = save_image(_image(), tmp_path, infotext="", filename_pattern="[seed]-[prompt_words]",
                      tags=tags)
    assert path.name == "00000-1234-a cat in a hat.png"


def test_prompt_no_styles_and_empty_seed():
    tags = _tags(prompt="cat, anime style", prompt_no_styles="cat")
    assert format_filename("[prompt_no_styles]", tags) == "cat"
    assert format_filename("", FilenameTags(seed=None, when=WHEN)) == ""


def test_empty_pattern_result_gives_bare_counter(tmp_path):
    path = save_image(_image(), tmp_path, infotext="", tags=FilenameTags(when=WHEN))
    assert path.name == "00000.png"


@pytest.mark.parametrize(
    "prompt",
    ["../../etc/passwd", "..\\..\\windows", "a\x00b\x1fc\nd", "x" * 1000, "...", "a/b:c*d?"],
)
def test_names_are_sanitised(tmp_path, prompt):
    out = tmp_path / "out"
    path = save_image(_image(), out, infotext="", filename_pattern="[prompt_spaces]",
                      tags=_tags(prompt=prompt))
    assert path.parent == out
    name = path.name
    assert ".." not in name and "/" not in name and "\\" not in name
    assert all(ord(c) >= 32 for c in name)
    assert len(name) <= 150 + len("00000-.png")
    assert _names(out) == [name]


def test_date_subdir(tmp_path):
    assert date_subdir(tmp_path, WHEN) == tmp_path / "2026-11-03"
    assert date_subdir(tmp_path).name == datetime.now().strftime("%Y-%m-%d")
