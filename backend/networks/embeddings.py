"""Textual-inversion embeddings from models/embeddings: read, listed, matched in prompts.

Formats: A1111 `.pt`/`.bin` (`string_to_param: {"*": (n, width)}`),
`.safetensors` (`emb_params`, or `clip_l` + `clip_g` for SDXL) and diffusers
`.bin` (`{token: (width,) or (n, width)}`). The name is the file's stem, as in
A1111, and it is written in a prompt as a word.

Files are read once per refresh. Whether an embedding fits is decided per
model (its width must be the text encoder's): one that does not is listed as
skipped with the reason and its name stays plain text.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.models.errors import CheckpointLoadError
from backend.models.hashing import sha256_of
from backend.models.safe_load import read_pickle_object, read_state_dict, sniff_format

log = logging.getLogger(__name__)
EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
SINGLE = "single"  # the one set of vectors an SD1/SD2 embedding holds


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # SINGLE, or "clip_l" and "clip_g"
    step: int | None = None
    sd_checkpoint_name: str | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def shorthash(self) -> str:
        """A1111's `TI hashes` value: the first 12 hex digits of the file's sha256."""
        if self._hash is None:
            self._hash = sha256_of(self.path)
        return self._hash[:12]

    def widths(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.vectors.items()}


class EmbeddingFormatError(ValueError):
    pass


def read_embedding(path: Path) -> Embedding:
    """One file -> Embedding; raises CheckpointLoadError/EmbeddingFormatError with the reason."""
    name = path.stem
    if sniff_format(path) == "safetensors":
        tensors, _ = read_state_dict(path)
        if "clip_l" in tensors and "clip_g" in tensors:
            return Embedding(name, path, {"clip_l": _rows(tensors["clip_l"]), "clip_g": _rows(tensors["clip_g"])})
        if "emb_params" in tensors:
            return Embedding(name, path, {SINGLE: _rows(tensors["emb_params"])})
        if len(tensors) == 1:
            return Embedding(name, path, {SINGLE: _rows(next(iter(tensors.values())))})
        raise EmbeddingFormatError(f"{path.name}: no emb_params or clip_l/clip_g tensors (keys: {_keys(tensors)})")
    data = read_pickle_object(path)
    if not isinstance(data, dict):
        raise EmbeddingFormatError(f"{path.name}: holds a {type(data).__name__}, not an embedding")
    params = data.get("string_to_param")
    if isinstance(params, dict) and params:
        vectors = next(iter(params.values()))
        step = data.get("step") if isinstance(data.get("step"), int) else None
        checkpoint = data.get("sd_checkpoint_name") if isinstance(data.get("sd_checkpoint_name"), str) else None
        return Embedding(name, path, {SINGLE: _rows(vectors)}, step=step, sd_checkpoint_name=checkpoint)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if "clip_l" in tensors and "clip_g" in tensors:
        return Embedding(name, path, {"clip_l": _rows(tensors["clip_l"]), "clip_g": _rows(tensors["clip_g"])})
    if len(tensors) == 1:  # diffusers: {"<token>": vector}
        return Embedding(name, path, {SINGLE: _rows(next(iter(tensors.values())))})
    raise EmbeddingFormatError(f"{path.name}: not a textual-inversion embedding (keys: {_keys(data)})")


def _rows(tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise EmbeddingFormatError("the vectors are not floating-point tensors")
    rows = tensor.detach().to(torch.float32)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise EmbeddingFormatError(f"vectors of shape {tuple(tensor.shape)}; expected (count, width)")
    if not torch.isfinite(rows).all():
        raise EmbeddingFormatError("the vectors contain NaN or infinite values")
    return rows


def _keys(mapping) -> str:
    keys = sorted(str(k) for k in mapping)
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


@dataclass
class SkippedFile:
    name: str
    reason: str


class EmbeddingStore:
    """The embeddings of some folders; `refresh` rereads them, `for_widths` picks what fits a model."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._loaded: dict[str, Embedding] = {}
        self._unreadable: list[SkippedFile] = []
        self.refresh()

    def refresh(self) -> None:
        loaded: dict[str, Embedding] = {}
        unreadable: list[SkippedFile] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if not path.is_file() or path.suffix.lower() not in EMBEDDING_EXTENSIONS:
                    continue
                try:
                    embedding = read_embedding(path)
                except (CheckpointLoadError, EmbeddingFormatError) as exc:
                    unreadable.append(SkippedFile(path.stem, str(exc).removeprefix(f"{path.name}: ")))
                    continue
                if embedding.name in loaded:
                    unreadable.append(SkippedFile(path.stem, f"another file is already named {path.stem!r}"))
                    continue
                loaded[embedding.name] = embedding
        with self._lock:
            self._loaded, self._unreadable = loaded, unreadable
        if unreadable:
            log.warning("embeddings skipped: %s", "; ".join(f"{s.name}: {s.reason}" for s in unreadable))

    def all(self) -> list[Embedding]:
        with self._lock:
            return list(self._loaded.values())

    def unreadable(self) -> list[SkippedFile]:
        with self._lock:
            return list(self._unreadable)

    def for_widths(self, widths: dict[str, int]) -> tuple[list[Embedding], list[SkippedFile]]:
        """Those that fit a model whose text encoders have these widths ({SINGLE: 768} or
        {"clip_l": 768, "clip_g": 1280}), and the others with the reason."""
        fits, skipped = [], []
        for embedding in self.all():
            have = embedding.widths()
            if have.keys() == widths.keys() and have == widths:
                fits.append(embedding)
            elif have.keys() != widths.keys():
                kind = "SDXL (clip_l + clip_g)" if "clip_g" in have else f"width {have[SINGLE]}"
                skipped.append(SkippedFile(embedding.name, f"made for another model family ({kind})"))
            else:
                skipped.append(SkippedFile(embedding.name, f"vectors of width {have}; this model needs {widths}"))
        return fits, skipped


class EmbeddingMatcher:
    """Finds embedding names in token ids: the longest name starting at a position wins."""

    def __init__(self, embeddings: list[Embedding], tokenizer):
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = tokenizer(embedding.name, add_special_tokens=False).input_ids
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def match(self, ids: list[int], start: int):
        for name_ids, embedding in self._by_first.get(ids[start], ()):
            if ids[start:start + len(name_ids)] == name_ids:
                return len(name_ids), embedding
        return None
