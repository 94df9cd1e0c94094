"""SDXL's micro-conditioning: the sizes and crop the UNet is told about (its `add_time_ids`).

SDXL was trained with each picture's original size, its crop's top-left corner and the target size
as extra inputs. A1111 passes original = target = the picture's size and the crop (0, 0); so do we
unless the request says otherwise. A 0 size means "this pass's size" (the hires pass has its own);
the negative values default to the positive ones, as diffusers does. Only values that differ from
those defaults are written in the infotext, so an ordinary picture's infotext stays A1111's.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# The sizes SDXL was fine-tuned at (about one megapixel each, from Stability's SDXL report).
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
    (1536, 640), (640, 1536),
)
_MAX = 8192
_KEYS = {  # infotext key -> (field of the width or top, field of the height or left)
    "SDXL original size": ("original_width", "original_height"),
    "SDXL crop top-left": ("crop_top", "crop_left"),
    "SDXL target size": ("target_width", "target_height"),
    "SDXL negative original size": ("negative_original_width", "negative_original_height"),
    "SDXL negative crop top-left": ("negative_crop_top", "negative_crop_left"),
    "SDXL negative target size": ("negative_target_width", "negative_target_height"),
}


def bucket_label(width: int, height: int) -> str:
    return f"{width}x{height}"


class SizeConditioning(BaseModel):
    model_config = ConfigDict(extra="forbid")

    original_width: int = Field(0, ge=0, le=_MAX)  # 0: the pass's width
    original_height: int = Field(0, ge=0, le=_MAX)
    crop_top: int = Field(0, ge=0, le=_MAX)
    crop_left: int = Field(0, ge=0, le=_MAX)
    target_width: int = Field(0, ge=0, le=_MAX)  # 0: the pass's width
    target_height: int = Field(0, ge=0, le=_MAX)
    negative_original_width: int = Field(0, ge=0, le=_MAX)  # 0: as the positive
    negative_original_height: int = Field(0, ge=0, le=_MAX)
    negative_crop_top: int | None = Field(None, ge=0, le=_MAX)  # None: as the positive
    negative_crop_left: int | None = Field(None, ge=0, le=_MAX)
    negative_target_width: int = Field(0, ge=0, le=_MAX)
    negative_target_height: int = Field(0, ge=0, le=_MAX)

    def sizes(self, width: int, height: int) -> dict[str, tuple[int, int]]:
        """diffusers' SDXL call arguments, each (height, width) or (top, left) as it takes them."""
        original = (self.original_height or height, self.original_width or width)
        crop = (self.crop_top, self.crop_left)
        target = (self.target_height or height, self.target_width or width)
        return {
            "original_size": original, "crops_coords_top_left": crop, "target_size": target,
            "negative_original_size": (self.negative_original_height or original[0],
                                       self.negative_original_width or original[1]),
            "negative_crops_coords_top_left": (crop[0] if self.negative_crop_top is None else self.negative_crop_top,
                                               crop[1] if self.negative_crop_left is None else self.negative_crop_left),
            "negative_target_size": (self.negative_target_height or target[0], self.negative_target_width or target[1]),
        }

    def infotext_params(self) -> dict[str, str]:
        """The values the request set, as `WxH` sizes and `top,left` crops."""
        params = {}
        for key, (first, second) in _KEYS.items():
            a, b = getattr(self, first), getattr(self, second)
            if "crop" in key:
                if (a, b) != ((0, 0) if "negative" not in key else (None, None)):
                    params[key] = f"{a or 0},{b or 0}"
            elif a or b:
                params[key] = f"{a}x{b}"
        return params

    @classmethod
    def from_infotext(cls, params: dict[str, str]) -> "SizeConditioning":
        """The inverse of infotext_params; unknown or malformed values are left at their defaults."""
        values: dict[str, int] = {}
        for key, (first, second) in _KEYS.items():
            text = params.get(key)
            if not text:
                continue
            parts = text.replace(" ", "").split("," if "crop" in key else "x")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                values[first], values[second] = int(parts[0]), int(parts[1])
        return cls(**values)
