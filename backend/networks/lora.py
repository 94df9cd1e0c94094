"""The LoRA files of models/Lora (and --lora-dir): listed, described, read once, looked up by name.

A tag names a LoRA by its file stem ("<lora:detail:0.8>" -> detail.safetensors)
or by its path under the folder without extension ("<lora:styles/ink:1>").
Names are only ever compared with the listing, never joined onto a folder,
so "../../x" is simply an unknown LoRA and nothing outside the folders is read.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_safetensors_header, read_state_dict, sniff_format
from backend.networks.lora_formats import LoraFormatError, ModuleUpdate, group_by_module

log = logging.getLogger(__name__)
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.webp", ".webp")


class LoraError(ValueError):
    pass


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash: sha256 of a safetensors file's tensor data (after the header), else of the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if sniff_format(path) == "safetensors":
            (header_len,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + header_len)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoraFile:
    name: str  # file stem: what a tag names
    path: Path
    folder: str  # path of its folder under the LoRA folder ("" at the top)
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header's (ss_* keys from kohya)
    preview: Path | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def alias(self) -> str:
        return self.metadata.get("ss_output_name") or self.name

    @property
    def shorthash(self) -> str:
        if self._hash is None:
            self._hash = addnet_hash(self.path)
        return self._hash[:12]

    @property
    def base_model(self) -> str | None:
        """What kohya says it was trained for ("sd_v1", "sdxl_base_v1-0"...), when it says."""
        return self.metadata.get("ss_base_model_version") or self.metadata.get("modelspec.architecture")


@dataclass
class LoadedLora:
    file: LoraFile
    updates: list[ModuleUpdate]
    unknown_keys: int


def _preview_for(path: Path) -> Path | None:
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


class LoraStore:
    def __init__(self, folders: list[Path], cache_size: int = 16):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._files: list[LoraFile] = []
        self._cache: dict[tuple[Path, float], LoadedLora] = {}
        self._cache_size = cache_size
        self.refresh()

    def refresh(self) -> list[LoraFile]:
        found: list[LoraFile] = []
        for root in self.folders:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if not path.is_file() or path.suffix.lower() not in LORA_EXTENSIONS:
                    continue
                metadata = {}
                try:
                    if sniff_format(path) == "safetensors":
                        _, metadata = read_safetensors_header(path)
                except CheckpointLoadError as exc:
                    log.warning("LoRA %s: %s", path.name, exc)
                folder = path.parent.relative_to(root).as_posix()
                found.append(LoraFile(name=path.stem, path=path, folder="" if folder == "." else folder,
                                      metadata=metadata, preview=_preview_for(path)))
        with self._lock:
            self._files = found
            self._cache.clear()
        return list(found)

    def files(self) -> list[LoraFile]:
        with self._lock:
            return list(self._files)

    def find(self, name: str) -> LoraFile:
        wanted = name.strip()
        files = self.files()
        for match in (lambda f: f.name == wanted,
                      lambda f: f"{f.folder}/{f.name}".lstrip("/") == wanted,
                      lambda f: f.alias == wanted,
                      lambda f: f.name.lower() == wanted.lower()):
            hits = [f for f in files if match(f)]
            if hits:
                return hits[0]
        raise LoraError(f"no LoRA named {name!r} in {', '.join(map(str, self.folders))}; press refresh "
                        "if you just added it")

    def load(self, name: str) -> LoadedLora:
        """The LoRA's modules, read once and kept while the file is unchanged."""
        file = self.find(name)
        key = (file.path, file.path.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            tensors, _ = read_state_dict(file.path)
        except CheckpointLoadError as exc:
            raise LoraError(f"LoRA {file.name}: {str(exc).removeprefix(file.path.name + ': ')}") from None
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise LoraError(f"LoRA {file.name}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]}); "
                            "the file is damaged and was not applied")
        try:
            updates, unknown = group_by_module(tensors)
        except LoraFormatError as exc:
            raise LoraError(f"LoRA {file.name}: {exc}") from None
        if not updates:
            raise LoraError(f"LoRA {file.name}: none of its {len(tensors)} tensors has a LoRA key "
                            "(lora_unet_*, lora_te_*, unet.*.lora_A ...); is it a LoRA?")
        loaded = LoadedLora(file=file, updates=updates, unknown_keys=len(unknown))
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = loaded
        return loaded
