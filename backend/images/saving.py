"""Saving generated images the A1111 way: `00042-1234.png` plus infotext.

Files are written atomically (temp file in the same folder, then os.replace),
so outputs/ never holds a half-written image, even if encoding fails midway.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.images.infotext import user_comment_exif

DEFAULT_PATTERN = "[seed]"
MAX_NAME_LENGTH = 150
PROMPT_WORDS = 8  # A1111's directories_max_prompt_words default

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_RE_COUNTER = re.compile(r"^(\d+)")
_RE_TAG = re.compile(r"\[(\w+)(?:<([^>\]]*)>)?\]")
_RE_NONLETTERS = re.compile(r"[\s,/\\]+")
_INVALID_CHARS = '#<>:"/\\|?*'
_NUMBER_TAGS = ("steps", "cfg", "width", "height", "batch_number")

# One lock per output folder: the counter is read and claimed under it.
_dir_locks: dict[Path, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


@dataclass
class FilenameTags:
    """Values for the [tag]s of a file name pattern; None leaves the tag empty."""

    seed: int | None = None
    prompt: str = ""
    prompt_no_styles: str | None = None  # None: same as prompt
    negative_prompt: str = ""
    model_name: str = ""
    model_hash: str = ""
    sampler: str = ""
    scheduler: str = ""
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    job_timestamp: datetime | str | None = None
    batch_number: int | None = None
    styles: list[str] = field(default_factory=list)
    when: datetime | None = None  # for [date]/[datetime]; None: now


def date_subdir(root: Path, when: datetime | None = None) -> Path:
    """root/YYYY-MM-DD, A1111's "save images to a subdirectory" layout."""
    return Path(root) / (when or datetime.now()).strftime("%Y-%m-%d")


def _clean_part(text: str, replace_spaces: bool = True) -> str:
    # Per-value cleanup, as A1111's sanitize_filename_part: prompts hold commas
    # and colons that some file systems reject.
    if replace_spaces:
        text = text.replace(" ", "_")
    text = "".join("_" if c in _INVALID_CHARS or ord(c) < 32 else c for c in text)
    return text.strip()[:128]


def _number(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _tag_value(tag: str, arg: str | None, tags: FilenameTags, now: datetime) -> str | None:
    """The text for one [tag], or None if the tag is unknown."""
    if tag == "seed":
        return _number(tags.seed)
    if tag == "prompt":
        return _clean_part(tags.prompt)
    if tag == "prompt_spaces":
        return _clean_part(tags.prompt, replace_spaces=False)
    if tag == "prompt_no_styles":
        base = tags.prompt if tags.prompt_no_styles is None else tags.prompt_no_styles
        return _clean_part(base)
    if tag == "prompt_words":
        words = [w for w in _RE_NONLETTERS.split(tags.prompt) if w]
        return _clean_part(" ".join(words[:PROMPT_WORDS]), replace_spaces=False)
    if tag == "negative_prompt":
        return _clean_part(tags.negative_prompt)
    if tag == "model_name":
        return _clean_part(tags.model_name)
    if tag == "model_hash":
        return _clean_part(tags.model_hash)
    if tag == "sampler":
        return _clean_part(tags.sampler, replace_spaces=False)
    if tag == "scheduler":
        return _clean_part(tags.scheduler, replace_spaces=False)
    if tag in _NUMBER_TAGS:
        return _number(getattr(tags, tag))
    if tag == "styles":
        return _clean_part(", ".join(tags.styles), replace_spaces=False)
    if tag == "date":
        return now.strftime("%Y-%m-%d")
    if tag == "datetime":
        # [datetime<%Y%m%d>] takes a strftime format, as in A1111.
        return _clean_part(now.strftime(arg or "%Y%m%d%H%M%S"), replace_spaces=False)
    if tag == "job_timestamp":
        stamp = tags.job_timestamp
        if isinstance(stamp, datetime):
            return stamp.strftime("%Y%m%d%H%M%S")
        return _clean_part(stamp or "")
    return None


def _sanitize_name(name: str) -> str:
    # Last line of defence: whatever the pattern produced must stay one file
    # name inside the output folder.
    name = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in name)
    while ".." in name:
        name = name.replace("..", ".")
    return name.strip(" .")[:MAX_NAME_LENGTH].rstrip(" .")


def format_filename(pattern: str, tags: FilenameTags) -> str:
    """Expand a pattern like "[seed]-[prompt_words]"; unknown tags stay as written."""
    now = tags.when or datetime.now()

    def replace(match: re.Match[str]) -> str:
        value = _tag_value(match.group(1).lower(), match.group(2), tags, now)
        return match.group(0) if value is None else value

    return _sanitize_name(_RE_TAG.sub(replace, pattern or DEFAULT_PATTERN))


def next_counter(directory: Path) -> int:
    """1 + the highest leading number among the folder's files (0 if none)."""
    highest = -1
    for entry in os.scandir(directory):
        match = _RE_COUNTER.match(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _dir_lock(directory: Path) -> threading.Lock:
    key = directory.resolve()
    with _dir_locks_guard:
        return _dir_locks.setdefault(key, threading.Lock())


def _encode(image: Image.Image, fmt: str, infotext: str, jpeg_quality: int, fileobj, extras_info: str = "") -> None:
    pil_format = _PIL_FORMATS[fmt]
    if pil_format == "PNG":
        info = PngInfo()
        if infotext:
            info.add_text("parameters", infotext)  # tEXt, or iTXt if not latin-1
        if extras_info:
            info.add_text("extras", extras_info)  # A1111's chunk for what the Extras tab did
        image.save(fileobj, format="PNG", pnginfo=info)
        return
    if extras_info:  # one EXIF comment only: the extras entries join the parameters' last line
        infotext = f"{infotext}, {extras_info}" if infotext else extras_info
    exif = user_comment_exif(infotext) if infotext else b""
    if pil_format == "JPEG":
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGB")  # JPEG has no alpha channel
        image.save(fileobj, format="JPEG", quality=jpeg_quality, exif=exif)
    else:
        image.save(fileobj, format="WEBP", quality=jpeg_quality, exif=exif)


def save_image(
    image: Image.Image,
    directory: Path,
    *,
    infotext: str,
    fmt: str = "png",
    filename_pattern: str = "",
    tags: FilenameTags,
    jpeg_quality: int = 80,
    extras_info: str = "",
) -> Path:
    """Save `image` as directory/NNNNN-<pattern>.<fmt> and return the path."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(_PIL_FORMATS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = format_filename(filename_pattern, tags)
    suffix = f"-{stem}.{fmt}" if stem else f".{fmt}"

    # Encode outside the lock (the slow part); the dot prefix keeps the temp
    # file out of counter scans and galleries.
    fd, tmp_name = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            _encode(image, fmt, infotext, jpeg_quality, fileobj, extras_info)
            fileobj.flush()
            os.fsync(fileobj.fileno())
        with _dir_lock(directory):
            # The scan sees every finished file, so the number is free.
            target = directory / f"{next_counter(directory):05d}{suffix}"
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
