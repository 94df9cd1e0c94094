"""The Extras tab's work on one picture: upscale (two upscalers blended), then
GFPGAN and CodeFormer, each blended by its visibility; and the "Postprocess ..."
entries A1111 records for it.

The same request type serves the Gradio tab and /sdapi/v1/extra-*-image(s).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.extras.faces import FaceRestorerLibrary
from backend.extras.upscalers import UpscalerLibrary, check_output_size, target_size
from backend.images.infotext import quote

ResizeMode = Literal["Scale by", "Scale to"]
MAX_EXTRAS_IMAGES = 64


class ExtrasRequest(BaseModel):
    """One Extras job: the same steps for every picture, A1111's field names."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    images: list[Image.Image] = Field(min_length=1, max_length=MAX_EXTRAS_IMAGES)
    names: list[str] = Field(default_factory=list)  # the uploads' file names, for batch saving
    resize_mode: ResizeMode = "Scale by"
    upscaling_resize: float = Field(2.0, ge=1.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    # A1111 before 1.0 restored faces first unless this was set; the tab (and A1111 1.x) upscales first.
    upscale_first: bool = True
    save_images: bool = True
    output_dir: str | None = None  # "Batch from directory": its output folder; None = outputs/extras-images

    @field_validator("upscaler_1", "upscaler_2", mode="before")
    @classmethod
    def _none_name(cls, value):
        return "None" if value in (None, "", "none") else value

    def destination(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_mode == "Scale by":
            return target_size(width, height, scale=self.upscaling_resize)
        return target_size(width, height, size=(self.upscaling_resize_w, self.upscaling_resize_h),
                           crop=self.upscaling_crop)

    @property
    def upscales(self) -> bool:
        return self.upscaler_1 != "None" or (self.upscaler_2 != "None" and self.extras_upscaler_2_visibility > 0)


@dataclass
class Processed:
    image: Image.Image
    params: dict[str, object] = field(default_factory=dict)  # ordered "Postprocess ..." entries
    messages: list[str] = field(default_factory=list)  # "no face found", ...


def check_sizes(request: ExtrasRequest) -> None:
    """Refuse, before any work, a picture whose result would be too large."""
    if not request.upscales:
        return
    for image in request.images:
        check_output_size(*request.destination(image.width, image.height))


def process_image(image: Image.Image, request: ExtrasRequest, upscalers: UpscalerLibrary,
                  faces: FaceRestorerLibrary, *, tile: int, tile_overlap: int,
                  progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Processed:
    out = Processed(image)
    steps = [_upscale, _faces] if request.upscale_first else [_faces, _upscale]
    for step in steps:
        step(out, request, upscalers=upscalers, faces=faces, tile=tile, tile_overlap=tile_overlap,
             progress=progress, should_stop=should_stop)
    return out


def _upscale(out: Processed, request: ExtrasRequest, *, upscalers: UpscalerLibrary, tile: int, tile_overlap: int,
             progress, should_stop, **_) -> None:
    if not request.upscales:
        return
    size = request.destination(out.image.width, out.image.height)
    crop = request.resize_mode == "Scale to" and request.upscaling_crop

    def run(name: str) -> Image.Image:
        if name == "None":  # upscaler 2 alone: A1111 resizes with nothing for upscaler 1
            return out.image.resize(size, Image.Resampling.LANCZOS) if out.image.size != size else out.image
        return upscalers.upscale(out.image, name, size=size, crop=crop, tile=tile, tile_overlap=tile_overlap,
                                 progress=progress, should_stop=should_stop)

    first = run(request.upscaler_1)
    if request.upscaler_2 != "None" and request.extras_upscaler_2_visibility > 0:
        second = run(request.upscaler_2)
        first = Image.blend(_same_mode(first, second), second, request.extras_upscaler_2_visibility)
    out.image = first
    if request.resize_mode == "Scale by":
        out.params["Postprocess upscale by"] = request.upscaling_resize
    else:
        out.params["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
        out.params["Postprocess crop to fit"] = request.upscaling_crop
    out.params["Postprocess upscaler"] = request.upscaler_1
    if request.upscaler_2 != "None" and request.extras_upscaler_2_visibility > 0:
        out.params["Postprocess upscaler 2"] = request.upscaler_2
        out.params["Postprocess upscaler 2 visibility"] = round(request.extras_upscaler_2_visibility, 3)


def _faces(out: Processed, request: ExtrasRequest, *, faces: FaceRestorerLibrary, should_stop, **_) -> None:
    if request.gfpgan_visibility > 0:
        out.image = restore_blended(out, faces, "GFPGAN", request.gfpgan_visibility, should_stop=should_stop)
        out.params["GFPGAN visibility"] = round(request.gfpgan_visibility, 3)
    if request.codeformer_visibility > 0:
        out.image = restore_blended(out, faces, "CodeFormer", request.codeformer_visibility,
                                    codeformer_weight=request.codeformer_weight, should_stop=should_stop)
        out.params["CodeFormer visibility"] = round(request.codeformer_visibility, 3)
        out.params["CodeFormer weight"] = round(request.codeformer_weight, 3)


def restore_blended(out: Processed, faces: FaceRestorerLibrary, restorer: str, visibility: float,
                    codeformer_weight: float = 0.5, should_stop=None) -> Image.Image:
    result = faces.restore(out.image, restorer, codeformer_weight=codeformer_weight, should_stop=should_stop)
    if result.faces == 0:
        out.messages.append(f"{restorer}: {result.message}")
        return out.image
    if visibility >= 1.0:
        return result.image
    return Image.blend(_same_mode(out.image, result.image), result.image, visibility)


def _same_mode(image: Image.Image, like: Image.Image) -> Image.Image:
    return image if image.mode == like.mode else image.convert(like.mode)


def format_extras_info(params: dict[str, object]) -> str:
    """A1111's "extras" text: `Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+, ...`."""
    return ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
