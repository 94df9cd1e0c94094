"""ControlNet / IP-Adapter units: the typed part of a request that the UI and the API both fill.

The field names and choices are sd-webui-controlnet's, so an A1111 client's
unit maps onto this type field by field (backend/api/controlnet.py does that).
A unit whose model is an IP-Adapter (or whose module is `ip-adapter_*`) is an
image prompt; every other enabled unit is a ControlNet.
"""
from __future__ import annotations

from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
CONTROL_MODES: tuple[str, ...] = ControlMode.__args__  # type: ignore[attr-defined]
HiresOption = Literal["Both", "Low res only", "High res only"]
HIRES_OPTIONS: tuple[str, ...] = HiresOption.__args__  # type: ignore[attr-defined]
UnitResizeMode = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]
UNIT_RESIZE_MODES: tuple[str, ...] = UnitResizeMode.__args__  # type: ignore[attr-defined]
MAX_UNITS = 8
NO_MODEL = ("", "none", "None")

# sd-webui-controlnet's names -> the img2img resize modes of backend/images/resize.py
IMAGE_RESIZE = {"Just Resize": "Just resize", "Crop and Resize": "Crop and resize",
                "Resize and Fill": "Resize and fill"}


class ControlUnit(BaseModel):
    """One unit of the ControlNet accordion (or one `alwayson_scripts.ControlNet.args` entry)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    enabled: bool = True
    module: str = "none"  # preprocessor; "none" = the image is the map
    model: str = "None"  # ControlNet or IP-Adapter: "name [hash]", name or file name
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Image.Image | None = None  # None: the img2img picture (img2img), an error (txt2img)
    more_images: list[Image.Image] = Field(default_factory=list, max_length=8)  # IP-Adapter: more references, averaged
    mask: Image.Image | None = None  # accepted as sd-webui-controlnet sends it; not used yet
    resize_mode: UnitResizeMode = "Crop and Resize"
    processor_res: int = Field(-1, ge=-1, le=4096)  # -1: the preprocessor's default
    threshold_a: float = -1.0  # -1: the preprocessor's default
    threshold_b: float = -1.0
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: ControlMode = "Balanced"
    pixel_perfect: bool = False
    hr_option: HiresOption = "Both"  # with hires. fix: which pass the unit acts in
    low_vram: bool = False  # accepted; models move to the device as the --medvram flags say

    @model_validator(mode="after")
    def _window(self) -> "ControlUnit":
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) is after guidance_end ({self.guidance_end}): "
                             "the unit would never act")
        return self

    @property
    def used(self) -> bool:
        """sd-webui-controlnet skips disabled units and units without a model."""
        return self.enabled and self.model not in NO_MODEL

    @property
    def is_ip_adapter_module(self) -> bool:
        return self.module.lower().startswith("ip-adapter")

    def acts_in(self, stage: str) -> bool:
        """Whether the unit acts in a pass: "single" (no hires. fix), "first" or "hires"."""
        if stage == "first":
            return self.hr_option != "High res only"
        if stage == "hires":
            return self.hr_option != "Low res only"
        return True

    def active_at(self, step: int, total: int) -> bool:
        """Whether the unit acts in step `step` of `total`: diffusers' ControlNet pipelines' rule."""
        total = max(total, 1)
        return not (step / total < self.guidance_start or (step + 1) / total > self.guidance_end)


def pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int], resize_mode: str) -> int:
    """sd-webui-controlnet's Pixel Perfect: the preprocessor resolution the output size asks for.

    The map is made at the resolution that, after the unit's resize mode, lands
    one map pixel on one output pixel: the inner fit for "Resize and Fill",
    the outer fit otherwise.
    """
    raw_w, raw_h = image_size
    target_w, target_h = target_size
    k_h, k_w = target_h / raw_h, target_w / raw_w
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return int(round(k * min(raw_w, raw_h)))
