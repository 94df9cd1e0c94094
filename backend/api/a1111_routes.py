"""The rest of A1111 1.10's /sdapi/v1 routes, in A1111's shapes: hypernetworks, realesrgan-models,
sd-modules, script-info, server-stop/-restart/-kill, and the training routes (501: not supported yet).

Clients (webuiapi, A1111's own tests, UIs that read every list at start-up) call them and break on a 404.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from backend.api.errors import ApiError, not_available, not_implemented
from backend.control.units import ControlUnit
from backend.extensions.scripts import StudioChoices
from backend.networks.hypernetworks import hypernetwork_files

REALESRGAN_FAMILY = "RealESRGAN"
SD_UPSCALE_INFO = ('<p style="margin-bottom:0.75em">Will upscale the image by the selected scale factor; '
                   'use width and height sliders to set tile size</p>')  # A1111's text, shown above the args


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class SDModuleItem(BaseModel):
    model_name: str
    filename: str


class ScriptArg(BaseModel):
    label: str | None = Field(None, description="Name of the argument in the UI")
    value: Any | None = Field(None, description="Default value")
    minimum: Any | None = None
    maximum: Any | None = None
    step: Any | None = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = []


def server_routes_allowed(flags: dict[str, Any]) -> bool:
    """A1111 offers /server-stop and the like only with --api-server-stop; here they are on too when nobody
    else can reach the studio (no --listen, no --share)."""
    exposed = flags.get("listen") or flags.get("share")
    return not exposed or bool(flags.get("api_server_stop"))


def _from_no_other_site(http: Request) -> None:
    """A web page on another site can still send a body-less POST to 127.0.0.1 (CORS only hides the answer),
    so a browser request from a foreign origin must not stop the studio. Scripts send no Origin."""
    origin = http.headers.get("origin")
    if origin and urlsplit(origin).netloc != http.headers.get("host"):
        raise ApiError(403, "Forbidden", f"the server cannot be stopped from a page of {origin}")


_TRAINING_ROUTES = {
    "/create/embedding": "an embedding trained with another tool works from models/embeddings",
    "/train/embedding": "an embedding trained with another tool works from models/embeddings",
    "/create/hypernetwork": "hypernetworks are listed but not applied; a LoRA in models/Lora does the same job",
    "/train/hypernetwork": "hypernetworks are listed but not applied; a LoRA in models/Lora does the same job",
}


def _refusal(hint: str) -> Callable[[], None]:
    def refuse() -> None:  # takes no parameters: whatever A1111's client sends is not read
        raise not_implemented(f"training is not supported in this studio yet ({hint})")
    return refuse


def add_a1111_routes(router: APIRouter, ctx: Any) -> None:
    """Adds the routes to `router` (the /sdapi/v1 one); `ctx` is the AppContext."""

    @router.get("/hypernetworks", response_model=list[HypernetworkItem])
    def hypernetworks() -> list[HypernetworkItem]:
        return [HypernetworkItem(name=f.name, path=str(f.path))
                for f in hypernetwork_files([ctx.root / "models" / "hypernetworks"])]

    @router.get("/realesrgan-models", response_model=list[RealesrganItem])
    def realesrgan_models() -> list[RealesrganItem]:
        """The RealESRGAN upscalers found: files in its folders, and those A1111 names "R-ESRGAN ..." anywhere."""
        upscalers = ctx.extras.upscalers
        in_family = {e["name"] for e in upscalers.entries(REALESRGAN_FAMILY)}
        return [RealesrganItem(name=e["name"], path=e["model_path"], scale=e["scale"])
                for e in upscalers.entries()
                if e["model_path"] and (e["name"] in in_family or e["name"].startswith("R-ESRGAN "))]

    @router.get("/sd-modules", response_model=list[SDModuleItem])
    def sd_modules() -> list[SDModuleItem]:
        # The separate model parts the studio can load are VAEs, as /sd-vae lists them.
        return [SDModuleItem(model_name=f.name, filename=str(f.path)) for f in ctx.networks.vaes.files()]

    @router.get("/script-info", response_model=list[ScriptInfo])
    def script_info() -> list[ScriptInfo]:
        """As A1111: each script once per tab it is on, txt2img's first; the same scripts as GET /scripts."""
        infos = []
        for kind in ("txt2img", "img2img"):
            img2img = kind == "img2img"
            infos += [_script_info(ctx, script, img2img) for script in ctx.service.scripts(kind)]
            infos.append(_controlnet_info(ctx, is_img2img=img2img))
            infos += [_controls_info(ctx, controls, img2img) for _, controls in ctx.service.hooks.controls
                      if kind in controls.tabs]
        return infos

    for route, hint in _TRAINING_ROUTES.items():
        router.add_api_route(route, _refusal(hint), methods=["POST"], name=route.strip("/").replace("/", "_"))

    if server_routes_allowed(getattr(ctx, "command_flags", {})):
        _add_server_routes(router, ctx)


def _add_server_routes(router: APIRouter, ctx: Any) -> None:
    def control(http: Request):
        _from_no_other_site(http)
        found = getattr(ctx, "server_control", None)
        if found is None:
            raise not_available("not available: this API is not running in the studio's own server")
        return found

    @router.post("/server-kill")
    def server_kill(http: Request) -> None:
        control(http).kill()

    @router.post("/server-restart")
    def server_restart(http: Request) -> None:
        control(http).restart()

    @router.post("/server-stop")
    def server_stop(http: Request) -> Response:
        control(http).stop()
        return Response("Stopping.")  # A1111's answer


def _controlnet_info(ctx: Any, is_img2img: bool) -> ScriptInfo:
    # sd-webui-controlnet's arguments are its units, each a dict; a new unit is disabled.
    unit = ControlUnit(enabled=False).model_dump(exclude={"image", "more_images", "mask"})
    count = ctx.options.options.control_net_unit_count
    return ScriptInfo(name="controlnet", is_alwayson=True, is_img2img=is_img2img,
                      args=[ScriptArg(label=f"ControlNet Unit {i}", value=dict(unit)) for i in range(count)])


def _args_info(ctx: Any, args) -> list[ScriptArg]:
    studio = StudioChoices(ctx.service)
    return [ScriptArg(label=a.label, value=a.default, minimum=a.minimum, maximum=a.maximum, step=a.step,
                      choices=a.choices_for(studio) or None) for a in args]


def _script_info(ctx: Any, script, is_img2img: bool) -> ScriptInfo:
    """A Script-dropdown entry, its args in the order script_args takes them."""
    if script.title.lower() == "sd upscale":  # A1111's own labels and info text
        return _sd_upscale_info(ctx.extras.upscalers.names())
    return ScriptInfo(name=script.title.lower(), is_alwayson=False, is_img2img=is_img2img,
                      args=_args_info(ctx, script.args))


def _controls_info(ctx: Any, controls, is_img2img: bool) -> ScriptInfo:
    return ScriptInfo(name=controls.title.lower(), is_alwayson=True, is_img2img=is_img2img,
                      args=_args_info(ctx, controls.args))


def _sd_upscale_info(upscaler_names: list[str]) -> ScriptInfo:
    # The order of script_args that img2img takes (convert._sd_upscale): info, overlap, upscaler, scale.
    return ScriptInfo(name="sd upscale", is_alwayson=False, is_img2img=True, args=[
        ScriptArg(label="", value=SD_UPSCALE_INFO),
        ScriptArg(label="Tile overlap", value=64, minimum=0, maximum=256, step=16),
        ScriptArg(label="Upscaler", value=upscaler_names[0] if upscaler_names else None, choices=upscaler_names),
        ScriptArg(label="Scale Factor", value=2.0, minimum=1.0, maximum=4.0, step=0.05),
    ])
