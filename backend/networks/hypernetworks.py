"""Hypernetwork files in models/hypernetworks, listed as A1111 lists them (GET /sdapi/v1/hypernetworks).

The studio does not apply hypernetworks yet (a `<hypernet:...>` tag says so); listing them lets A1111
clients that read the list before sending a prompt keep working.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HYPERNETWORK_EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class HypernetworkFile:
    name: str  # the file's stem, as A1111 names a hypernetwork
    path: Path


def hypernetwork_files(dirs: Iterable[Path]) -> list[HypernetworkFile]:
    """Every hypernetwork file under `dirs` (recursively), sorted by path ignoring case, as A1111 sorts them.

    A name is listed once: the first file with it wins. "None" is skipped, as in A1111, where it means
    "no hypernetwork".
    """
    found: dict[str, HypernetworkFile] = {}
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        paths = (p for p in folder.rglob("*") if p.suffix.lower() in HYPERNETWORK_EXTENSIONS and p.is_file())
        for path in sorted(paths, key=lambda p: str(p).lower()):
            if path.stem != "None" and path.stem not in found:
                found[path.stem] = HypernetworkFile(name=path.stem, path=path)
    return list(found.values())
