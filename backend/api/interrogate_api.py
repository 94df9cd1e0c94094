"""POST /sdapi/v1/interrogate, as A1111: {"image": base64, "model": "clip"} -> {"caption": "..."}."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from backend.api import convert
from backend.api.errors import ApiError
from backend.images.loading import ImageInputError, decode_base64_image
from backend.interrogate import InterrogateError

_ERROR_NAMES = {404: "NotFound", 409: "Interrupted", 422: "ValidationError", 501: "NotImplemented",
                503: "ServiceUnavailable"}


class InterrogateRequest(BaseModel):
    image: str = Field("", description="Image to caption, base64 (a data: URL prefix is fine)")
    model: str = Field("clip", description="clip (a BLIP caption, from models/BLIP) or deepdanbooru")


class InterrogateResponse(BaseModel):
    caption: str


def add_interrogate_routes(router: APIRouter, ctx: Any, run: Callable) -> None:
    """Mount on `router`; `run(http, task_id, work)` makes the caption a job that /progress and /interrupt see."""

    @router.post("/interrogate", response_model=InterrogateResponse)
    def interrogate(req: InterrogateRequest, http: Request) -> InterrogateResponse:
        if not req.image:
            raise convert.ApiFieldError([("image", "no image given")])
        try:
            image = decode_base64_image(req.image, "image")
        except ImageInputError as err:
            raise convert.ApiFieldError([("image", str(err))]) from None
        try:
            caption = run(http, None, lambda job: ctx.interrogate.interrogate(image, req.model, job))
        except InterrogateError as err:
            raise ApiError(err.status_code, _ERROR_NAMES.get(err.status_code, "InterrogateError"), str(err)) from None
        return InterrogateResponse(caption=caption)
