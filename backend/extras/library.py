"""The utility models of the Extras tab, built once at start-up and passed explicitly:
upscalers (also for hires. fix and SD upscale), face restorers, and SAM."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.extras.faces import FaceRestorerLibrary
from backend.extras.segment import SamLibrary
from backend.extras.upscalers import UPSCALER_FOLDERS, UpscalerLibrary


@dataclass
class ExtrasPaths:
    models: Path  # the studio's models/ folder: A1111's sub-folder names below it
    upscaler_dirs: dict[str, list[Path]] = field(default_factory=dict)  # --esrgan-models-path etc., per family
    gfpgan_dir: Path | None = None  # --gfpgan-models-path
    codeformer_dir: Path | None = None  # --codeformer-models-path
    sam_dir: Path | None = None  # --sam-models-path

    def upscalers(self) -> dict[str, list[Path]]:
        """Each family's folders: the flag's folder when given (A1111 moves the folder), else models/<Family>."""
        return {family: list(self.upscaler_dirs.get(family) or [self.models / family]) for family in UPSCALER_FOLDERS}

    def gfpgan(self) -> list[Path]:
        return [self.gfpgan_dir or self.models / "GFPGAN"]

    def codeformer(self) -> list[Path]:
        return [self.codeformer_dir or self.models / "Codeformer"]

    def facexlib(self) -> list[Path]:
        # A1111 keeps facexlib's detection and parsing files beside GFPGAN's; some installs have models/facexlib.
        return [*self.gfpgan(), self.models / "facexlib", *self.codeformer()]

    def sam(self) -> list[Path]:
        return [self.sam_dir or self.models / "sam"]


@dataclass
class ExtrasLibrary:
    upscalers: UpscalerLibrary
    faces: FaceRestorerLibrary
    segment: SamLibrary

    @classmethod
    def build(cls, paths: ExtrasPaths, device: torch.device, dtype: torch.dtype) -> "ExtrasLibrary":
        return cls(upscalers=UpscalerLibrary(paths.upscalers(), device, dtype),
                   faces=FaceRestorerLibrary(paths.gfpgan(), paths.codeformer(), paths.facexlib(), device, dtype),
                   segment=SamLibrary(paths.sam(), device, dtype))

    def refresh(self) -> None:
        self.upscalers.refresh()
        self.faces.refresh()
        self.segment.refresh()
