"""Finding upscaler files in the model folders and naming them the way A1111 users know them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "HAT", "DAT")  # A1111's folder names under models/
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
MODEL_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")

# A1111's names for the files it downloads itself (modules/realesrgan_model.py, swinir_model.py,
# dat_model.py); scripts and saved infotexts use these, so the same files answer to the same names here.
# Every other file is named by its stem, as A1111's modelloader.friendly_name does.
A1111_LABELS = {
    "RealESRGAN_x4plus": "R-ESRGAN 4x+",
    "RealESRGAN_x4plus_anime_6B": "R-ESRGAN 4x+ Anime6B",
    "RealESRGAN_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "SwinIR_4x": "SwinIR 4x",
    "DAT_x2": "DAT x2",
    "DAT_x3": "DAT x3",
    "DAT_x4": "DAT x4",
}


@dataclass(frozen=True)
class UpscalerFile:
    name: str    # what names() lists and upscale() takes
    stem: str    # also accepted by upscale()
    family: str  # the folder family it was found under ("ESRGAN", ...)
    path: Path


def _family_order(dirs: Mapping[str, Sequence[Path]]) -> list[str]:
    known = [f for f in UPSCALER_FOLDERS if f in dirs]
    return known + [f for f in dirs if f not in known]


def _files_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MODEL_EXTENSIONS and p.is_file())


def scan(dirs: Mapping[str, Sequence[Path]]) -> list[UpscalerFile]:
    """Every model file under the folders, in family then folder order, each with a unique name.

    The first file to claim a name keeps it; a later one with the same stem (another folder, another
    extension) is told apart by its family, then its folder, then its full folder path.
    """
    taken = set(BUILTIN_UPSCALERS)
    seen: set[Path] = set()
    found = []
    for family in _family_order(dirs):
        for folder in dirs[family]:
            for path in _files_in(Path(folder)):
                real = path.resolve()
                if real in seen:  # the same folder listed twice (or under two families)
                    continue
                seen.add(real)
                base = A1111_LABELS.get(path.stem, path.stem)
                name = next((n for n in _candidates(base, family, path) if n not in taken))
                taken.add(name)
                found.append(UpscalerFile(name=name, stem=path.stem, family=family, path=path))
    return found


def _candidates(base: str, family: str, path: Path):
    yield base
    yield f"{base} ({family})"
    yield f"{base} ({path.parent.name})"
    yield f"{base} ({path.parent})"
    yield f"{base} ({path.name}, {path.parent})"
    n = 2
    while True:
        yield f"{base} ({n})"
        n += 1


def find(files: Sequence[UpscalerFile], name: str) -> UpscalerFile | None:
    """The file a user means: its listed name, else its stem (so "RealESRGAN_x4plus" finds "R-ESRGAN 4x+"),
    then either one ignoring case."""
    for matches in (lambda f: f.name == name, lambda f: f.stem == name,
                    lambda f: f.name.casefold() == name.casefold(), lambda f: f.stem.casefold() == name.casefold()):
        hit = next((f for f in files if matches(f)), None)
        if hit is not None:
            return hit
    return None


def where_files_go(dirs: Mapping[str, Sequence[Path]]) -> str:
    folders = [str(folder) for family in _family_order(dirs) for folder in dirs[family]]
    return (f"Upscaler files ({', '.join(MODEL_EXTENSIONS)}) go in "
            f"{', '.join(folders) if folders else 'models/' + ', models/'.join(UPSCALER_FOLDERS)}")
