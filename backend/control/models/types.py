"""Plain data about ControlNet files, and the errors the ControlNet store raises."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.models.errors import ModelError
from backend.models.types import ModelFamily

WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


class ControlNetLoadError(ModelError, ValueError):
    """A ControlNet file that cannot be used; the message names the file and says why."""


class UnknownControlNetError(ModelError, ValueError):
    """No listed ControlNet has the name a request gave."""


class UnsupportedControlNet(ValueError):
    """Readable weights that are not a ControlNet layout this studio can build (message without the file name)."""


@dataclass
class ControlNetInfo:
    """One entry of the ControlNet list: a weights file or a diffusers folder."""

    path: Path
    name: str  # relative to its root folder, posix ("sub/control_v11p_sd15_canny.pth")
    kind: str = "controlnet"  # or "ip-adapter" (kept in models/ControlNet by sd-webui-controlnet users)
    family: ModelFamily | None = None
    error: str | None = None  # why it cannot be used; listed, not hidden
    hash8: str | None = None  # A1111's old model hash (see scan.old_model_hash)

    @property
    def model_name(self) -> str:
        """The file name without folder or extension, as sd-webui-controlnet names models."""
        base = self.name.rsplit("/", 1)[-1]  # a diffusers folder keeps its whole name ("controlnet-canny-sdxl-1.0")
        stem, dot, ext = base.rpartition(".")
        return stem if dot and f".{ext.lower()}" in WEIGHT_EXTENSIONS else base

    @property
    def title(self) -> str:
        """"model_name [hash8]", the string sd-webui-controlnet's model list and its API use."""
        return f"{self.model_name} [{self.hash8}]" if self.hash8 else self.model_name
