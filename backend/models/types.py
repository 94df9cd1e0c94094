"""Plain data about checkpoints, shared by the scanner, loader and manager."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ModelFamily(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)

    @property
    def native_size(self) -> int:
        return {ModelFamily.SD1: 512, ModelFamily.SD2: 512, ModelFamily.SDXL: 1024,
                ModelFamily.SDXL_REFINER: 1024}[self]


@dataclass(frozen=True)
class ModelVariant:
    """What detection found, beyond the family."""

    family: ModelFamily
    prediction_type: str = "epsilon"  # or "v_prediction"
    inpainting: bool = False  # 9-channel UNet input
    distilled: str | None = None  # "SSD-1B", "Vega", or another reduced SDXL UNet
    resolution: int | None = None  # trained size when the file says so (modelspec.resolution)
    zero_terminal_snr: bool = False  # trained on a schedule that ends in pure noise (sample from t=999)

    @property
    def native_size(self) -> int:
        """The width/height the UI should start from for this model."""
        if self.resolution:
            return self.resolution
        if self.family is ModelFamily.SD2 and self.prediction_type == "v_prediction":
            return 768
        return self.family.native_size

    @property
    def label(self) -> str:
        name = {ModelFamily.SD1: "SD1.x", ModelFamily.SD2: "SD2.x", ModelFamily.SDXL: "SDXL",
                ModelFamily.SDXL_REFINER: "SDXL refiner"}[self.family]
        if self.distilled:
            name = f"{name} ({self.distilled})"
        if self.family is ModelFamily.SD2:
            name += " v" if self.prediction_type == "v_prediction" else " eps"
        elif self.prediction_type == "v_prediction":
            name += " v"
        if self.inpainting:
            name += " inpainting"
        return name


@dataclass
class CheckpointInfo:
    """One entry of the checkpoint list: a file or a diffusers folder."""

    path: Path
    name: str  # path relative to the checkpoint dir, as A1111 shows it ("sub/model.safetensors")
    sha256: str | None = None  # filled lazily (hash cache) or when loaded
    error: str | None = None  # set when the entry is listed as unsupported
    variant: ModelVariant | None = None  # known from the header at scan time (safetensors) or after loading
    builtin: bool = False  # shipped with the studio (the demo model), not the user's own file

    @property
    def model_name(self) -> str:
        """Name without extension, as A1111's `model_name`."""
        stem = self.name
        for ext in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
            if stem.lower().endswith(ext):
                return stem[: -len(ext)]
        return stem

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name


@dataclass
class LoadedCheckpoint:
    """A checkpoint in memory: its base text-to-image pipeline and what it is.

    Derived pipelines (img2img, inpaint, ...) are made from `pipe` with
    `from_pipe`, so they share its weights.
    """

    info: CheckpointInfo
    variant: ModelVariant
    pipe: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline
    extra: dict[str, Any] = field(default_factory=dict)
