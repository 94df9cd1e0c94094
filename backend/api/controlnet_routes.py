"""sd-webui-controlnet's routes, under /controlnet as there: version, model and module lists, settings, detect.

Clients (webuiapi, Krita's and Photoshop's plug-ins) read these to fill their
unit pickers, so the answers keep sd-webui-controlnet's keys. Detection runs on
the device, between jobs, like a model load.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from backend.api import convert
from backend.api.auth import Credentials, basic_auth_dependency
from backend.api.routes import ErrorMappingRoute
from backend.images.loading import ImageInputError, base64_payload, open_image

API_VERSION = 2  # sd-webui-controlnet's external_code API version that these shapes follow


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send low_vram, controlnet_masks, ...

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # the older name webuiapi still sends
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


def _slider(slider) -> dict[str, Any] | None:
    if slider is None:
        return None
    return {"name": slider.label, "min": slider.minimum, "max": slider.maximum, "value": slider.value,
            "step": slider.step}


def create_controlnet_router(ctx: Any, credentials: Credentials | None = None) -> APIRouter:
    router = APIRouter(route_class=ErrorMappingRoute,
                       dependencies=[Depends(basic_auth_dependency(credentials or []))])
    control = ctx.control

    @router.get("/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(update: bool = Query(True)) -> dict[str, Any]:
        if update:
            control.refresh()
        unusable = {i.name: i.error for i in control.controlnets.files() if i.error}
        unusable.update({i.name: i.error for i in control.ip_adapters.files() if i.error})
        return {"model_list": control.model_titles(), "unusable": unusable}

    @router.get("/module_list")
    def module_list(alias_names: bool = Query(False)) -> dict[str, Any]:
        specs = control.preprocessors.specs()
        names = [s.aliases[0] if alias_names and s.aliases else s.name for s in specs]
        detail = {name: {"model_free": not spec.weight_files,
                         "sliders": [s for s in (_slider(spec.resolution), _slider(spec.threshold_a),
                                                 _slider(spec.threshold_b)) if s]}
                  for name, spec in zip(names, specs)}
        return {"module_list": names, "module_detail": detail}

    @router.get("/settings")
    def settings() -> dict[str, Any]:
        return {"control_net_unit_count": ctx.options.options.control_net_unit_count}

    @router.post("/detect")
    def detect(req: DetectRequest) -> dict[str, Any]:
        spec = control.preprocessors.find(req.controlnet_module)  # unknown: 422 naming it
        inputs = req.controlnet_input_images or req.controlnet_images
        if not inputs:
            raise convert.ApiFieldError([("controlnet_input_images", "send at least one base64 image")])
        images, problems = [], []
        for index, data in enumerate(inputs):
            try:
                images.append(open_image(base64_payload(data, f"image {index}"), f"image {index}"))
            except ImageInputError as err:
                problems.append((f"controlnet_input_images.{index}", str(err)))
        if problems:
            raise convert.ApiFieldError(problems)
        a = req.controlnet_threshold_a if req.controlnet_threshold_a >= 0 else None
        b = req.controlnet_threshold_b if req.controlnet_threshold_b >= 0 else None
        res = req.controlnet_processor_res if req.controlnet_processor_res > 0 else None
        maps = ctx.service.queue.on_device_now(
            lambda: [control.detect(spec.name, image, res, a, b) for image in images])
        return {"images": [convert.encode_png_base64(m, None) for m in maps], "info": "Success"}

    return router
