"""Plain data about IP-Adapters and CLIP image encoders."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from backend.models.types import ModelFamily

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")

# h94's adapters by cross-attention width of their to_k_ip layers.
FAMILY_BY_CROSS_DIM = {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL,
                       1280: ModelFamily.SDXL_REFINER}
FAMILY_LABEL = {ModelFamily.SD1: "SD1.x", ModelFamily.SD2: "SD2.x", ModelFamily.SDXL: "SDXL",
                ModelFamily.SDXL_REFINER: "SDXL refiner"}


class IpAdapterError(ValueError):
    """A message fit to show a user as is."""


@dataclass
class IpAdapterInfo:
    path: Path
    name: str  # file name relative to its folder, as the file list shows it
    kind: str = ""  # "plain" (ImageProjection), "plus" (Resampler) or "full" (full-face MLP)
    family: ModelFamily | None = None
    embed_dim: int = 0  # image-embedding width the encoder must give (projection or hidden size)
    cross_attention_dim: int = 0
    layers: int = 0  # cross-attention layers the adapter carries
    shorthash: str | None = None  # A1111's old 8-digit model hash
    error: str | None = None

    @property
    def model_name(self) -> str:
        """The name without its extension ("sub/ip-adapter_sd15"), as A1111 shows model names."""
        suffix = Path(self.name).suffix
        return self.name[: -len(suffix)] if suffix.lower() in WEIGHT_SUFFIXES else self.name

    @property
    def title(self) -> str:
        return f"{self.model_name} [{self.shorthash}]" if self.shorthash else self.model_name

    @property
    def uses_hidden_states(self) -> bool:
        """plus/full read the encoder's penultimate hidden states; plain reads its projected embedding."""
        return self.kind in ("plus", "full")

    @property
    def family_label(self) -> str:
        if self.family:
            return FAMILY_LABEL[self.family]
        return f"{self.cross_attention_dim}-wide cross-attention"


@dataclass
class EncoderInfo:
    """One entry of models/clip_vision: a transformers folder or a single weights file."""

    path: Path
    name: str
    hidden_size: int = 0
    projection_dim: int = 0
    image_size: int = 0
    error: str | None = None

    def width_for(self, adapter: IpAdapterInfo) -> int:
        return self.hidden_size if adapter.uses_hidden_states else self.projection_dim


@dataclass
class IpAdapterUse:
    """One IP-Adapter unit of a request."""

    name: str
    images: list[Image.Image] = field(default_factory=list)
    weight: float = 1.0
    start: float = 0.0  # share of sampling steps where the unit begins to act
    end: float = 1.0
    encoder: str | None = None  # a clip_vision entry by name; None picks one whose width fits
