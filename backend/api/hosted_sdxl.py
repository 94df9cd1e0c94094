"""`POST /v1/sdxl1.0-txt2img`: the body of Segmind's hosted SDXL 1.0 API, run by the studio.

A script written for `https://api.segmind.com/v1/sdxl1.0-txt2img` works by changing its host (and
sending `--api-auth` credentials instead of `x-api-key`). The body is Segmind's, field for field:

    prompt (required), negative_prompt, style, samples, scheduler, num_inference_steps, guidance_scale,
    strength, high_noise_fraction, seed, img_width, img_height, refiner, base64

Defaults are the hosted API's where its page says them (style "base", samples 1, scheduler "UniPC",
guidance_scale 7.5, high_noise_fraction 0.8, base64 false, no negative prompt) and otherwise those
of Segmind's own Python SDK (segmind-py `SDXL.generate`): 25 steps, strength 0.2, 1024x1024, refiner
on. A missing seed, or -1, is a random one. `null` means the default; numbers sent as strings (as
segmind-py sends them) are read as numbers. Fields the hosted API does not have are refused (422)
rather than ignored: a misspelt field must not give a picture made without it.

The answer is the picture itself (`image/png`, with the A1111 `parameters` infotext chunk), or with
`base64: true` JSON `{"image": "<base64 PNG>", "images": [...]}`: `image` is the key the hosted API
answers with; `images` holds every sample, as the hosted API documents one picture per answer. So
with `samples` > 1 the raw answer is the first picture only (the others are in `images` of the
JSON answer).

How the fields map onto the studio's request (the same conversion /sdapi/v1/txt2img does, so the
same values there give the same pixels):

- `prompt`, `negative_prompt`, `seed`, `num_inference_steps` (steps), `guidance_scale` (CFG scale),
  `img_width` / `img_height`, `samples` (batch size, one batch). The ranges are the studio's (sizes
  64..4096 in multiples of 8, CFG 1..30, up to 8 samples), which hold the hosted API's documented ones.
- `style`: "base" is no style; any other value is a style of the studio's styles.csv, matched by
  name ignoring case and "-"/"_" versus spaces, so the hosted API's "3d-model" or "comic-book" find
  the starter set's "3d model" and "comic book". An unknown style is a 422 naming the ones there
  are: a picture without the look asked for is not what the script wants.
- `scheduler`: the hosted API's names become a studio sampler and schedule type (below). A studio
  sampler name ("DPM++ 2M SDE", "k_euler_a", ...) is accepted too, with its Automatic schedule.
- `refiner: true`: the first listed checkpoint detected as an SDXL refiner takes over the schedule at
  `high_noise_fraction` (the request's `refiner.switch_at`, so it must then be in that field's range:
  0 is refused). With no refiner checkpoint the answer is 404 (as for an unknown checkpoint elsewhere
  in the API), saying to put one in models/Stable-diffusion or send `refiner: false`. The base model
  is the selected checkpoint, as /sdapi/v1/txt2img uses with no override.
- `strength` is accepted (0..1) and changes nothing. In the hosted API it is the img2img strength
  of the refiner stage, and diffusers' SDXL img2img pipeline ignores `strength` when it is handed
  the base's latents with `denoising_start` (the ensemble of experts, which is what
  `high_noise_fraction` selects); without a refiner there is no picture to transform. Treating it
  as a hires. fix denoise would add a second pass no one asked for.

Schedulers (Segmind's list: DDIM, DPM Multi, DPM Single, Euler a, Euler, Heun, DPM2 a Karras, DPM2
Karras, LMS, PNDM, DDPM, UniPC; plus dpmpp_2m and dpmpp_sde_ancestral that its SDXL examples use):

- "DDIM" -> DDIM; "Euler a" -> Euler a; "Euler" -> Euler; "Heun" -> Heun; "LMS" -> LMS;
  "UniPC" -> UniPC; all with the Automatic schedule (the model's own timestep spacing, as a
  diffusers scheduler made from the model's config has).
- "PNDM" -> PLMS (diffusers' PNDMScheduler with skip_prk_steps, as SD's pipelines run it).
- "DPM Multi", "dpmpp_2m" -> DPM++ 2M, Uniform: DPMSolverMultistepScheduler without Karras sigmas
  (the hosted list names its Karras variants separately; the studio's DPM++ 2M would pick Karras).
- "DPM Single" -> DPM++ SDE, Uniform: the studio's one single-step DPM-Solver++ (second order, with
  SDE noise; diffusers' default single-step solver has none, so pixels differ from the hosted API).
- "dpmpp_sde_ancestral" -> DPM++ SDE, Karras (its Automatic schedule): the stochastic DPM-Solver++.
- "DPM2 Karras" -> DPM2, Karras; "DPM2 a Karras" -> DPM2 a, Karras.
- "DDPM" -> Euler a: the studio has no DDPM sampler; Euler ancestral (eta 1) is DDPM's ancestral
  step taken on the sigma schedule, the closest that follows the same seed.

The job runs as /sdapi/v1/txt2img's do: the caller's own job in the device's fair queue.
"""
from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError

from backend.api import convert
from backend.api.auth import Credentials, basic_auth_dependency, caller
from backend.api.errors import ApiError
from backend.api.jobs import ApiJobs
from backend.api.routes import ErrorMappingRoute
from backend.api.schemas import StableDiffusionTxt2ImgProcessingAPI as ApiTxt2Img
from backend.api.schemas import _NullMeansDefault
from backend.generation.request import Txt2ImgRequest
from backend.models.types import ModelFamily
from backend.sdxl.refiner import Refiner

PATH = "/sdxl1.0-txt2img"
NO_STYLE = "base"

# The hosted API's scheduler name (lower case) -> (studio sampler, schedule type); see the docstring.
SCHEDULERS: dict[str, tuple[str, str]] = {
    "ddim": ("DDIM", "Automatic"),
    "dpm multi": ("DPM++ 2M", "Uniform"),
    "dpm single": ("DPM++ SDE", "Uniform"),
    "euler a": ("Euler a", "Automatic"),
    "euler": ("Euler", "Automatic"),
    "heun": ("Heun", "Automatic"),
    "dpm2 a karras": ("DPM2 a", "Karras"),
    "dpm2 karras": ("DPM2", "Karras"),
    "lms": ("LMS", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
    "ddpm": ("Euler a", "Automatic"),
    "unipc": ("UniPC", "Automatic"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_sde_ancestral": ("DPM++ SDE", "Automatic"),
}
HOSTED_SCHEDULER_NAMES = ("DDIM", "DPM Multi", "DPM Single", "Euler a", "Euler", "Heun", "DPM2 a Karras",
                          "DPM2 Karras", "LMS", "PNDM", "DDPM", "UniPC", "dpmpp_2m", "dpmpp_sde_ancestral")

# The A1111 field names convert.py reports -> this body's names.
_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "styles": "style", "seed": "seed",
           "sampler_name": "scheduler", "sampler_index": "scheduler", "scheduler": "scheduler",
           "batch_size": "samples", "steps": "num_inference_steps", "cfg_scale": "guidance_scale",
           "width": "img_width", "height": "img_height"}


class HostedSdxlTxt2Img(_NullMeansDefault):
    """The hosted API's body; unknown fields are refused, null means the default."""

    prompt: str = Field(description="prompt to render")
    negative_prompt: str = Field("", description="prompts to exclude")
    style: str = Field(NO_STYLE, description='"base" for none, or a style of styles.csv')
    samples: int = Field(1, description="pictures to make (one batch)")
    scheduler: str = Field("UniPC", description="the hosted API's scheduler name, or a studio sampler")
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    strength: float = Field(0.2, ge=0.0, le=1.0, description="accepted; changes nothing (see the module)")
    high_noise_fraction: float = Field(0.8, ge=0.0, le=1.0, description="where the refiner takes over")
    seed: int = Field(-1, description="-1: random")
    img_width: int = 1024
    img_height: int = 1024
    refiner: bool = True
    base64: bool = Field(False, description='true: JSON {"image": base64 PNG} instead of the PNG bytes')


def resolve_scheduler(name: str, samplers) -> tuple[str, str]:
    """(studio sampler, schedule type) for a hosted scheduler name or a studio sampler name."""
    key = name.strip().lower()
    if key in SCHEDULERS:
        return SCHEDULERS[key]
    try:
        return samplers.resolve(name), "Automatic"
    except (KeyError, ValueError):
        raise convert.ApiFieldError([("scheduler", f"unknown scheduler {name!r}; choose one of: "
                                                   f"{', '.join(HOSTED_SCHEDULER_NAMES)}")]) from None


def _style_key(name: str) -> str:
    return " ".join(name.replace("-", " ").replace("_", " ").casefold().split())


def resolve_style(name: str, styles) -> list[str]:
    """The request's `styles` for a hosted `style`: none for "base", else the studio style of that name."""
    if name.strip().casefold() in ("", NO_STYLE):
        return []
    names = styles.names()
    for same in (lambda s: s == name, lambda s: s.casefold() == name.casefold(),
                 lambda s: _style_key(s) == _style_key(name)):
        found = [s for s in names if same(s)]
        if found:
            return [found[0]]
    known = ", ".join(repr(s) for s in names) or "none (styles.csv is empty)"
    raise convert.ApiFieldError([("style", f"no style {name!r} here; send \"base\" for none, or one of: {known}")])


def refiner_checkpoint(manager) -> str:
    """The first listed checkpoint detected as an SDXL refiner (its name); 404 when there is none."""
    for entry in manager.checkpoints():
        if entry.error is None and entry.variant is not None and entry.variant.family is ModelFamily.SDXL_REFINER:
            return entry.name
    raise ApiError(404, "UnknownCheckpointError",
                   "refiner: no SDXL refiner checkpoint found; put one (e.g. sd_xl_refiner_1.0.safetensors) in "
                   "models/Stable-diffusion and refresh, or send refiner: false")


def _renamed(err: convert.ApiFieldError) -> convert.ApiFieldError:
    problems = []
    for field, reason in err.problems:
        ours = _FIELDS.get(field, field)
        if field in ("width", "height") and reason.startswith(field + " "):
            reason = ours + reason[len(field):]
        problems.append((ours, reason))
    return type(err)(problems)


def equivalent_a1111_request(body: HostedSdxlTxt2Img, styles, samplers) -> ApiTxt2Img:
    """The /sdapi/v1/txt2img payload that asks for the same picture (the refiner aside)."""
    sampler, schedule = resolve_scheduler(body.scheduler, samplers)
    return ApiTxt2Img(prompt=body.prompt, negative_prompt=body.negative_prompt,
                      styles=resolve_style(body.style, styles), seed=body.seed, sampler_name=sampler,
                      scheduler=schedule, batch_size=body.samples, n_iter=1, steps=body.num_inference_steps,
                      cfg_scale=body.guidance_scale, width=body.img_width, height=body.img_height)


def to_txt2img_request(body: HostedSdxlTxt2Img, ctx: Any) -> Txt2ImgRequest:
    """The studio's request for a hosted body; raises ApiFieldError naming the hosted fields."""
    try:
        payload = equivalent_a1111_request(body, ctx.styles, ctx.service.samplers)
        request = convert.to_txt2img_request(payload, ctx.options.options, ctx.service)
    except convert.ApiFieldError as err:
        raise _renamed(err) from None
    if not body.refiner:
        return request
    checkpoint = refiner_checkpoint(ctx.manager)
    try:
        refiner = Refiner(checkpoint=checkpoint, switch_at=body.high_noise_fraction)
    except ValidationError as err:  # the refiner's own range for its switch point
        reason = "; ".join(e["msg"] for e in err.errors())
        raise convert.ApiFieldError([("high_noise_fraction", f"as the refiner's switch point: {reason}")]) from None
    return request.model_copy(update={"refiner": refiner})


def _pngs(result: Any, count: int) -> list[str]:
    """The first `count` pictures as base64 PNGs, each with its infotext chunk."""
    texts = list(result.infotexts)
    return [convert.encode_png_base64(image, texts[i] if i < len(texts) else None)
            for i, image in enumerate(result.images[:count])]


def create_hosted_sdxl_router(ctx: Any, credentials: Credentials | None = None,
                              jobs: ApiJobs | None = None) -> APIRouter:
    """The hosted-API route; the caller mounts it under /v1. `jobs`: shared with /sdapi/v1, so its
    /progress, /interrupt and /skip reach these jobs too."""
    router = APIRouter(route_class=ErrorMappingRoute,
                       dependencies=[Depends(basic_auth_dependency(credentials or []))])
    jobs = jobs if jobs is not None else ApiJobs()

    @router.post(PATH, responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    def sdxl_txt2img(body: HostedSdxlTxt2Img, http: Request) -> Response:
        request = to_txt2img_request(body, ctx)
        task = jobs.start(caller(http))
        try:
            result = ctx.service.txt2img(request, task.job)
        finally:
            jobs.finish(task)
        if not result.images:  # interrupted before the first picture
            raise ApiError(503, "Interrupted", "the job was interrupted before a picture was made")
        if body.base64:
            images = _pngs(result, len(result.images))
            return JSONResponse({"image": images[0], "images": images})
        return Response(content=base64.b64decode(_pngs(result, 1)[0]), media_type="image/png")

    return router
