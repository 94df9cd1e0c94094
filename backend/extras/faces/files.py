"""Where the face-restoration files are, in A1111's folder layout.

models/GFPGAN holds GFPGANv1.4.pth (or v1.3, ...), models/Codeformer holds
codeformer-v0.1.0.pth; the face detector and parser facexlib downloads
(detection_Resnet50_Final.pth, parsing_parsenet.pth) sit in models/facexlib or,
as older A1111 versions put them, next to GFPGAN or CodeFormer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


def existing_dirs(dirs: Iterable[Path]) -> list[Path]:
    return [Path(d) for d in dirs if Path(d).is_dir()]


def find_named(dirs: Sequence[Path], name: str) -> Path | None:
    """The first `dirs/name` that is a file (name matched case-insensitively, as Windows users save them)."""
    wanted = name.lower()
    for folder in existing_dirs(dirs):
        exact = folder / name
        if exact.is_file():
            return exact
        for candidate in sorted(folder.iterdir()):
            if candidate.name.lower() == wanted and candidate.is_file():
                return candidate
    return None


def find_restorer_file(dirs: Sequence[Path], marker: str) -> Path | None:
    """A weights file whose name contains `marker` ("gfpgan", "codeformer"); the highest version name first."""
    for folder in existing_dirs(dirs):
        found = [p for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES and marker in p.name.lower()]
        if found:
            return sorted(found, key=lambda p: p.name.lower(), reverse=True)[0]
    return None


def shown(dirs: Sequence[Path]) -> str:
    """The folders for a message: 'models/facexlib or models/GFPGAN'."""
    names = [str(d) for d in dirs]
    if not names:
        return "(no folder is configured)"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
