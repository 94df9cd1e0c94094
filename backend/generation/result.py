"""What one generation job answers: the pictures, their infotexts and seeds, A1111's `info`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    paths: list[Path] = field(default_factory=list)  # saved files; empty when not saved
    info: dict[str, Any] = field(default_factory=dict)  # A1111's `info` fields
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)  # said to the user: a LoRA that did not apply, ...
    control_maps: list[Image.Image] = field(default_factory=list)  # ControlNet maps used (hidden by a setting)
