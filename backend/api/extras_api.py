"""A1111's Extras routes: /extra-single-image, /extra-batch-images, and the
lists of upscalers and face restorers that are really installed."""
from __future__ import annotations

from typing import Any, Callable, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from backend.api import convert
from backend.api.schemas import FaceRestorerItem, UpscalerItem
from backend.extras.postprocess import MAX_EXTRAS_IMAGES, ExtrasRequest
from backend.images.infotext import read_infotext
from backend.images.loading import ImageInputError, decode_base64_mask


class ExtrasBaseRequest(BaseModel):
    resize_mode: Literal[0, 1] = Field(0, description="0: scale by upscaling_resize; 1: scale to width and height")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = Field(False, description="Should the upscaler run before restoring faces?")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="Image to work on, base64 (a data: URL prefix is fine)")


class FileData(BaseModel):
    data: str = Field(description="Base64 of the file")
    name: str = Field("", description="File name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="Images to work on", max_length=MAX_EXTRAS_IMAGES)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def _decode(data: str, field: str):
    if not data:
        raise convert.ApiFieldError([(field, "no image given")])
    try:
        return decode_base64_mask(data, "the image")  # as sent: alpha, bit depth and infotext kept
    except ImageInputError as err:
        raise convert.ApiFieldError([(field, str(err))]) from None


def _extras_request(req: ExtrasBaseRequest, images: list, names: list[str]) -> ExtrasRequest:
    fields = req.model_dump(exclude={"image", "imageList", "show_extras_results", "resize_mode"})
    # As A1111's API: nothing is saved; the caller gets the pictures back.
    return ExtrasRequest(images=images, names=names, resize_mode=("Scale by", "Scale to")[req.resize_mode],
                         save_images=False, **fields)


def _encoded(result, sources: list, send: bool) -> list[str]:
    if not send:
        return []
    return [convert.encode_png_base64(image, read_infotext(source), extras)
            for image, source, extras in zip(result.images, sources, result.infotexts)]


def add_extras_routes(router: APIRouter, ctx: Any, run: Callable) -> None:
    """Mount on `router` (prefixed /sdapi/v1); `run(http, task_id, work)` makes it a job /progress sees."""

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(req: ExtrasSingleImageRequest, http: Request) -> ExtrasSingleImageResponse:
        image = _decode(req.image, "image")
        request = _extras_request(req, [image], [])
        result = run(http, None, lambda job: ctx.extras_service.run(request, job))
        images = _encoded(result, [image], True)
        return ExtrasSingleImageResponse(html_info=result.html_info, image=images[0] if images else "")

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(req: ExtrasBatchImagesRequest, http: Request) -> ExtrasBatchImagesResponse:
        if not req.imageList:
            raise convert.ApiFieldError([("imageList", "no images given")])
        images = [_decode(item.data, f"imageList.{i}.data") for i, item in enumerate(req.imageList)]
        request = _extras_request(req, images, [item.name for item in req.imageList])
        result = run(http, None, lambda job: ctx.extras_service.run(request, job))
        return ExtrasBatchImagesResponse(html_info=result.html_info,
                                         images=_encoded(result, images, req.show_extras_results))

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[UpscalerItem]:
        return [UpscalerItem(**entry) for entry in ctx.extras.upscalers.entries()]

    @router.post("/refresh-upscalers")
    def refresh_upscalers() -> None:
        ctx.extras.upscalers.refresh()

    @router.get("/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers() -> list[FaceRestorerItem]:
        return [FaceRestorerItem(**entry) for entry in ctx.extras.faces.entries()]
