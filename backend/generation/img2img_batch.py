"""img2img over a folder of pictures (A1111's img2img "Batch" tab).

Each picture in the input folder is one img2img request with the same
settings; a mask folder supplies masks by file stem (`cat.png` <- `cat.png` or
`cat.jpg` in the mask folder). Results go to the output folder with their
infotext, or to the usual img2img folder when no output folder is given.
A picture that cannot be read is listed as skipped with the reason; the rest
of the batch goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backend.generation.img2img import EmptyMaskError
from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from backend.generation.service import GenerationResult, GenerationService
from backend.images.loading import ImageInputError, open_image, open_mask
from backend.images.saving import FilenameTags, save_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class FolderBatchResult:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    interrupted: bool = False


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(mask_dir: Path | None, image_path: Path) -> Path | None:
    if mask_dir is None:
        return None
    for candidate in list_images(mask_dir):
        if candidate.stem == image_path.stem:
            return candidate
    return None


def _folder(text: str | Path | None, what: str, must_exist: bool) -> Path | None:
    if text is None or not str(text).strip():
        return None
    folder = Path(str(text).strip()).expanduser()
    if must_exist and not folder.is_dir():
        raise ValueError(f"the {what} folder {str(folder)!r} does not exist")
    return folder


def run_folder_batch(service: GenerationService, fields: dict[str, Any], input_dir: str | Path,
                     output_dir: str | Path | None, mask_dir: str | Path | None,
                     job: JobControl, jpeg_quality: int = 80, fmt: str = "png") -> FolderBatchResult:
    """img2img on every picture of `input_dir` with the request `fields` (no init_images/mask)."""
    source = _folder(input_dir, "input", must_exist=True)
    if source is None:
        raise ValueError("choose an input folder for the batch")
    masks = _folder(mask_dir, "mask", must_exist=True)
    target = _folder(output_dir, "output", must_exist=False)
    files = list_images(source)
    if not files:
        raise ValueError(f"the input folder {str(source)!r} holds no pictures")
    out = FolderBatchResult()
    for path in files:
        if job.interrupted:
            break
        try:
            image = open_image(path, path.name)
            mask_path = _find_mask(masks, path)
            mask = open_mask(mask_path, mask_path.name) if mask_path else None
        except ImageInputError as err:
            out.skipped.append((path.name, str(err)))
            continue
        request = Img2ImgRequest.model_validate(
            {**fields, "init_images": [image], "mask": mask,
             "save_images": fields.get("save_images", True) and target is None}, context=service.request_context)
        try:
            result: GenerationResult = service.img2img(request, job)
        except EmptyMaskError as err:
            out.skipped.append((path.name, str(err)))
            continue
        out.images += result.images
        out.infotexts += result.infotexts
        out.seeds += result.seeds
        if target is not None:
            out.paths += [_save_beside(image, text, seed, target, path, fmt, jpeg_quality)
                          for image, text, seed in zip(result.images, result.infotexts, result.seeds)]
        else:
            out.paths += result.paths
    out.interrupted = job.interrupted
    return out


def _save_beside(image: Image.Image, infotext: str, seed: int, target: Path, source: Path, fmt: str,
                 jpeg_quality: int) -> Path:
    # Named after the input, as A1111's batch does, so outputs are easy to match.
    return save_image(image, target, infotext=infotext, fmt=fmt, filename_pattern=source.stem,
                      tags=FilenameTags(seed=seed), jpeg_quality=jpeg_quality)
