"""sd-webui-segment-anything's routes, mounted under /sam as there: heartbeat, model list, predict, dilate-mask.

Request fields and answer keys are the extension's (scripts/api.py), so its
clients (scripts posting raw JSON, Krita/Photoshop helpers) work unchanged:
images in and out are base64 PNGs, three candidates per prediction. What
differs, on purpose:
- GroundingDINO (text prompts) is not available: `dino_enabled: true` is
  refused with 422 instead of silently segmenting without it.
- an optional `sam_box` [x0, y0, x1, y1] (pixels) prompts SAM with a box.
- errors are answered in the studio's A1111 style ({"error", "detail",
  "errors"}, 404 for an unknown model, 422 for a bad request) and also carry
  the extension's `msg`, where the extension answered 200 with only `msg`.
- the default model: a request that names no model gets sam_vit_h_4b8939.pth,
  as in the extension. When that file is absent and exactly one SAM model is
  installed, a request for it (named or by default: most scripts copy it from
  the extension's README) gets the one installed, and `msg` says so. Any other
  absent model is a 404 that lists what is installed.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from backend.api import convert
from backend.api.auth import Credentials, basic_auth_dependency
from backend.api.routes import ErrorMappingRoute, error_response
from backend.extras.segment import SamLibrary, blend_mask, grow_mask, masked_image
from backend.images.loading import decode_base64_image, decode_base64_mask, to_mask

DEFAULT_MODEL = "sam_vit_h_4b8939.pth"  # the extension's default sam_model_name
T = TypeVar("T")


class SamPredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sam_model_name: str | None = DEFAULT_MODEL
    input_image: str
    sam_positive_points: list[list[float]] = Field(default_factory=list)
    sam_negative_points: list[list[float]] = Field(default_factory=list)
    sam_box: list[float] | None = None  # ours: [x0, y0, x1, y1] in pixels
    dino_enabled: bool = False
    dino_model_name: str | None = "GroundingDINO_SwinT_OGC (694MB)"
    dino_text_prompt: str | None = None
    dino_box_threshold: float | None = 0.3
    dino_preview_checkbox: bool = False
    dino_preview_boxes_selection: list[int] | None = None


class DilateMaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_image: str
    mask: str
    dilate_amount: int = Field(10, ge=-512, le=512)


class _SamErrorRoute(ErrorMappingRoute):
    """The studio's JSON errors, plus the extension's `msg` key that its clients print."""

    def error_answer(self, exc: Exception) -> Response:
        answer = error_response(exc)
        body = json.loads(answer.body)
        return JSONResponse({**body, "msg": body.get("detail", "")}, status_code=answer.status_code)


def _png(image) -> str:
    return convert.encode_png_base64(image, None)


def _mask_picture(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, "L")


def resolve_model(library: SamLibrary, requested: str | None) -> tuple[str, str]:
    """The model to use and a note for `msg` when it is not the one named (see the module docstring)."""
    name = requested or DEFAULT_MODEL
    if name not in library.model_names():
        library.refresh()  # a file dropped in since the last listing
    names = library.model_names()
    if name not in names and name == DEFAULT_MODEL and len(names) == 1:
        return names[0], f" Used {names[0]}, the only SAM model installed ({DEFAULT_MODEL} is not)."
    return name, ""  # absent: predict answers 404 with the installed names


def sam_router(library: SamLibrary, credentials: Credentials | None = None,
               on_device: Callable[[Callable[[], T]], T] | None = None) -> APIRouter:
    """Routes for the caller to mount at prefix "/sam". `on_device` runs model work under the studio's device
    lock (ctx.service.queue.on_device_now), between generation jobs; without it the work runs in place."""
    router = APIRouter(route_class=_SamErrorRoute, dependencies=[Depends(basic_auth_dependency(credentials or []))])
    run = on_device or (lambda work: work())

    @router.get("/heartbeat")
    def heartbeat() -> dict[str, str]:
        return {"msg": "Success!"}

    @router.get("/sam-model", description="Query available SAM model")
    def sam_model() -> list[str]:
        library.refresh()
        return library.model_names()

    @router.post("/sam-predict")
    def sam_predict(req: SamPredictRequest) -> dict[str, Any]:
        if req.dino_enabled:
            raise convert.ApiFieldError([("dino_enabled", "GroundingDINO text prompts are not supported here; "
                                          "send sam_positive_points / sam_negative_points or sam_box instead")])
        if req.sam_box is not None and len(req.sam_box) != 4:
            raise convert.ApiFieldError([("sam_box", f"four numbers [x0, y0, x1, y1] are needed, "
                                          f"got {len(req.sam_box)}")])
        image = decode_base64_image(req.input_image, "input_image")
        name, note = resolve_model(library, req.sam_model_name)
        box = tuple(req.sam_box) if req.sam_box is not None else None
        result = run(lambda: library.predict(name, image, req.sam_positive_points, req.sam_negative_points, box))
        status = (f"SAM inference with {0 if box is None else 1} box, {len(req.sam_positive_points)} positive "
                  f"prompts, {len(req.sam_negative_points)} negative prompts done.{note}")
        return {"msg": status,
                "blended_images": [_png(blend_mask(image, m)) for m in result.masks],
                "masks": [_png(_mask_picture(m)) for m in result.masks],
                "masked_images": [_png(masked_image(image, m)) for m in result.masks]}

    @router.post("/dilate-mask")
    def dilate_mask(req: DilateMaskRequest) -> dict[str, str]:
        image = decode_base64_image(req.input_image, "input_image")
        mask = np.asarray(to_mask(decode_base64_mask(req.mask, "mask"), size=image.size)) > 127
        # The extension dilates with a disk `dilate_amount` across, so the edge moves by half of it.
        amount = req.dilate_amount
        grown = grow_mask(mask, (abs(amount) // 2) * (1 if amount >= 0 else -1))
        return {"blended_image": _png(blend_mask(image, grown)), "mask": _png(_mask_picture(grown)),
                "masked_image": _png(masked_image(image, grown))}

    return router
