"""Read weights from files downloaded from strangers without running their code.

The format is chosen by the file's first bytes, never by its extension:
safetensors is parsed as data; zip or legacy pickles go only through
`torch.load(weights_only=True)`, which refuses any pickle that names code.
Every failure becomes a CheckpointLoadError whose message says what is wrong.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from backend.models.errors import CheckpointLoadError

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # real headers are a few MB at most
_PICKLE_PROTOCOL_MARK = 0x80
_ZIP_MAGIC = b"PK\x03\x04"


class TensorShape:
    """Stands in for a tensor where only the shape is known (header-only reads)."""

    def __init__(self, shape: list[int]):
        self.shape = tuple(shape)


def sniff_format(path: Path) -> str:
    """"safetensors", "zip-pickle" or "pickle"; raises CheckpointLoadError otherwise."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointLoadError(f"{path.name}: the file is empty (0 bytes); the download did not finish")
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == _ZIP_MAGIC:
        return "zip-pickle"
    if head[0] == _PICKLE_PROTOCOL_MARK:
        return "pickle"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise CheckpointLoadError(
            f"{path.name}: this is a web page, not model weights (the download probably failed or needed a login)")
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if header_len > MAX_SAFETENSORS_HEADER:
                raise CheckpointLoadError(
                    f"{path.name}: the safetensors header claims {header_len} bytes; refusing a header over "
                    f"{MAX_SAFETENSORS_HEADER // 2**20} MB (damaged or malicious file)")
            if header_len + 8 > size:
                raise CheckpointLoadError(f"{path.name}: the file is truncated (its header runs past the end)")
            return "safetensors"
    raise CheckpointLoadError(f"{path.name}: unknown file format (not safetensors, not a PyTorch checkpoint)")


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorShape], dict[str, str]]:
    """Keys, shapes and metadata of a safetensors file, without reading any tensor data."""
    sniff_format(path)  # size and header-length checks
    size = path.stat().st_size
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointLoadError(f"{path.name}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointLoadError(f"{path.name}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    shapes = {}
    data_end = 0
    for key, entry in header.items():
        try:
            shapes[key] = TensorShape(entry["shape"])
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointLoadError(f"{path.name}: malformed safetensors entry {key!r}") from None
    if 8 + header_len + data_end > size:
        raise CheckpointLoadError(
            f"{path.name}: the file is truncated ({size} bytes, its header needs {8 + header_len + data_end})")
    return shapes, {str(k): str(v) for k, v in metadata.items()}


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file (CPU) and its safetensors metadata ({} for pickles)."""
    kind = sniff_format(path)
    if kind == "safetensors":
        read_safetensors_header(path)  # validates offsets before the library maps the file
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as exc:  # the library's own errors are terse; name the file
            raise CheckpointLoadError(f"{path.name}: damaged safetensors file ({exc})") from None
    return _read_pickle(path, kind), {}


def _read_pickle(path: Path, kind: str) -> dict[str, torch.Tensor]:
    return _tensors_from(read_pickle_object(path, kind), path)


def read_pickle_object(path: Path, kind: str | None = None) -> Any:
    """What a .pt/.ckpt/.bin pickle holds (nested dicts of tensors and plain values), loaded without code."""
    kind = kind or sniff_format(path)
    if kind == "safetensors":
        raise CheckpointLoadError(f"{path.name}: is a safetensors file, not a pickle")
    if kind == "zip-pickle":
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except zipfile.BadZipFile:
            raise CheckpointLoadError(f"{path.name}: the file is truncated or damaged (bad zip archive)") from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip-pickle")
    except pickle.UnpicklingError as exc:
        raise CheckpointLoadError(
            f"{path.name}: refused to load: the pickle asks to run code or build objects that plain weights "
            f"never need ({_first_line(exc)}). No code from the file was run. If you trust it, convert it to "
            ".safetensors elsewhere.") from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointLoadError(f"{path.name}: the file is truncated or damaged ({_first_line(exc)})") from None
    return obj


def _tensors_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # A1111-era .ckpt files wrap the weights: {"state_dict": {...}, "global_step": ...}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointLoadError(f"{path.name}: holds a {type(obj).__name__}, not a dictionary of weights")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointLoadError(f"{path.name}: contains no tensors")
    return tensors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
