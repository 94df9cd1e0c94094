"""A1111-compatible REST routes; the caller mounts them under /sdapi/v1.

Endpoints are plain `def`s, so FastAPI runs them in its worker threads and the
event loop stays free while a picture is generated or a checkpoint loads.
Errors become JSON `{"detail": "<field>: <reason>", ...}` responses, because
A1111 clients print `detail`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from backend.api import convert
from backend.api.a1111_routes import add_a1111_routes
from backend.api.auth import Credentials, basic_auth_dependency, caller
from backend.api.errors import ApiError
from backend.api.extras_api import add_extras_routes
from backend.api.interrogate_api import add_interrogate_routes
from backend.api.jobs import ApiJobs, ApiTask
from backend.api.schemas import (
    EmbeddingItem,
    EmbeddingsResponse,
    ImageToImageResponse,
    LatentUpscalerModeItem,
    LoraItem,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    StableDiffusionImg2ImgProcessingAPI,
    StableDiffusionTxt2ImgProcessingAPI,
    TextToImageResponse,
)
from backend.devices import memory_report
from backend.extensions.installer import git_info
from backend.generation.request import LATENT_UPSCALERS
from backend.generation.samplers import SCHEDULE_TYPES
from backend.images.infotext import parse_infotext, read_infotext
from backend.images.loading import ImageInputError, decode_base64_mask
from backend.models.errors import CheckpointLoadError, UnknownCheckpointError
from backend.prompts.conditioning import embedding_widths
from backend.settings import (
    A1111_PATH_OPTIONS,
    A1111_SERVER_ONLY_OPTIONS,
    PATH_OPTIONS,
    SERVER_ONLY_OPTIONS,
    Options,
)

log = logging.getLogger(__name__)

# Options the API never sets (folders, and what decides where the server reaches out to).
_REFUSED_OPTIONS = PATH_OPTIONS | A1111_PATH_OPTIONS | SERVER_ONLY_OPTIONS | A1111_SERVER_ONLY_OPTIONS


def _problems_response(status: int, problems: list[tuple[str, str]], error: str) -> JSONResponse:
    detail = "; ".join(f"{field}: {reason}" if field else reason for field, reason in problems)
    errors = [{"field": field, "message": reason} for field, reason in problems]
    return JSONResponse({"error": error, "detail": detail, "errors": errors}, status_code=status)


def _pydantic_problems(errors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    problems = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        problems.append((".".join(loc), str(e.get("msg", "")).removeprefix("Value error, ")))
    return problems


def error_response(exc: Exception) -> JSONResponse:
    """The JSON error answer for an exception raised while handling a request."""
    if isinstance(exc, convert.ApiFieldError):
        error = "Forbidden" if exc.status_code == 403 else "ValidationError"
        return _problems_response(exc.status_code, exc.problems, error)
    if isinstance(exc, (ValidationError, RequestValidationError)):
        return _problems_response(422, _pydantic_problems(exc.errors()), "ValidationError")
    if isinstance(exc, ApiError):  # e.g. 501 for A1111's training routes
        return _problems_response(exc.status_code, [("", str(exc))], exc.error)
    if isinstance(exc, UnknownCheckpointError):
        return _problems_response(404, [("", str(exc))], type(exc).__name__)
    if isinstance(exc, (CheckpointLoadError, ValueError)):  # e.g. an inpainting model asked for txt2img
        return _problems_response(422, [("", str(exc))], type(exc).__name__)
    log.exception("API request failed")
    return _problems_response(500, [("", f"{type(exc).__name__}: {exc}")], type(exc).__name__)


class ErrorMappingRoute(APIRoute):
    """Turns exceptions from validation and handlers into A1111-style JSON errors.

    A router cannot register app-wide exception handlers, so the mapping lives in
    the route class and works wherever the router is mounted. Other routers
    (e.g. /sam) subclass it and override `error_answer`.
    """

    def error_answer(self, exc: Exception) -> Response:
        return error_response(exc)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a JSON answer
                return self.error_answer(exc)

        return handle


_SECRET_FLAGS = ("gradio_auth", "gradio_auth_path", "api_auth", "tls_keyfile")


def redacted_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The command line for /cmd-flags: secrets (passwords, key files) only say that they are set."""
    return {k: ("<set>" if v else v) if k in _SECRET_FLAGS else (str(v) if hasattr(v, "__fspath__") else v)
            for k, v in flags.items()}


def _progress(task: ApiTask | None, skip_current_image: bool) -> ProgressResponse:
    if task is None:
        return ProgressResponse()
    snap = task.job.snapshot()
    state = ProgressState(skipped=False, interrupted=task.job.interrupted, job=task.task_id,
                          job_count=snap.job_count, job_no=snap.job_no, sampling_step=snap.step,
                          sampling_steps=snap.total_steps, queue_position=snap.queue_position,
                          job_timestamp=task.job.created.strftime("%Y%m%d%H%M%S"))
    if snap.queue_position:
        return ProgressResponse(state=state, textinfo=f"In queue: {snap.queue_position} job(s) ahead",
                                current_task=task.task_id)
    image = None
    if snap.preview is not None and not skip_current_image:
        image = convert.encode_png_base64(snap.preview, None)
    return ProgressResponse(progress=snap.progress, eta_relative=snap.eta_seconds or 0.0, state=state,
                            current_image=image, textinfo=snap.text or None, current_task=task.task_id)


def create_api_router(ctx: Any, credentials: Credentials | None = None, jobs: ApiJobs | None = None) -> APIRouter:
    """Routes on `ctx` (an AppContext: options, manager, service). Prefix set by the caller.

    With `credentials`, every route asks for HTTP Basic auth. `jobs`: the API jobs /progress, /interrupt
    and /skip see, shared with the other routers that run jobs.
    """
    router = APIRouter(route_class=ErrorMappingRoute, dependencies=[Depends(basic_auth_dependency(credentials or []))])
    jobs = jobs if jobs is not None else ApiJobs()

    def run(http: Request, force_task_id: str | None, generate) -> Any:
        """Run `generate(job)` as the caller's job, known to /progress, /interrupt and /skip meanwhile."""
        task = jobs.start(caller(http), force_task_id)
        try:
            return generate(task.job)
        finally:
            jobs.finish(task)

    @router.post("/txt2img", response_model=TextToImageResponse)
    def txt2img(req: StableDiffusionTxt2ImgProcessingAPI, http: Request) -> TextToImageResponse:
        request = convert.to_txt2img_request(req, ctx.options.options, ctx.service)
        result = run(http, req.force_task_id, lambda job: ctx.service.txt2img(request, job))
        return TextToImageResponse(images=convert.result_images(result, req.send_images),
                                   parameters=req.model_dump(), info=convert.result_info(result))

    @router.post("/img2img", response_model=ImageToImageResponse)
    def img2img(req: StableDiffusionImg2ImgProcessingAPI, http: Request) -> ImageToImageResponse:
        request = convert.to_img2img_request(req, ctx.options.options, ctx.extras.upscalers.names(), ctx.service)
        result = run(http, req.force_task_id, lambda job: ctx.service.img2img(request, job))
        parameters = req.model_dump()
        if not req.include_init_images:  # as A1111: the (large) inputs are not echoed unless asked
            parameters["init_images"] = None
            parameters["mask"] = None
        return ImageToImageResponse(images=convert.result_images(result, req.send_images),
                                    parameters=parameters, info=convert.result_info(result))

    @router.get("/progress", response_model=ProgressResponse)
    def progress(http: Request, skip_current_image: bool = Query(False)) -> ProgressResponse:
        """The caller's own job: the one running, else the first one waiting."""
        active = jobs.active(caller(http))
        return _progress(active[0] if active else None, skip_current_image)

    @router.post("/interrupt")
    def interrupt(http: Request) -> None:
        """Stops the caller's running job (it returns what it finished) and drops its waiting ones."""
        for task in jobs.active(caller(http)):
            task.job.interrupt()

    @router.post("/skip")
    def skip(http: Request) -> None:
        """Ends the image batch the caller's running job is on; the job goes on with the next one."""
        active = jobs.active(caller(http))
        if active and active[0].job.queue_position is None:
            active[0].job.skip()

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return redacted_flags(getattr(ctx, "command_flags", {}))

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(req: PNGInfoRequest) -> PNGInfoResponse:
        try:
            image = decode_base64_mask(req.image, "the image")  # decoded as stored: metadata intact
        except ImageInputError as err:
            raise convert.ApiFieldError([("image", str(err))]) from None
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, (str, int, float))}
        return PNGInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models() -> list[SDModelItem]:
        return [
            SDModelItem(title=c.title, model_name=c.model_name, hash=c.shorthash, sha256=c.sha256,
                        filename=str(c.path), config=None)
            for c in ctx.manager.checkpoints() if not c.error
        ]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        ctx.manager.refresh()

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[LoraItem]:
        return [LoraItem(name=f.name, alias=f.alias, path=str(f.path), metadata=f.metadata)
                for f in ctx.networks.loras.files()]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        ctx.networks.loras.refresh()

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> EmbeddingsResponse:
        """As A1111: `loaded` fit the current checkpoint, `skipped` do not (or could not be read)."""
        def item(e) -> EmbeddingItem:
            return EmbeddingItem(step=e.step, sd_checkpoint=None, sd_checkpoint_name=e.sd_checkpoint_name,
                                 shape=sum(e.widths().values()), vectors=e.length)

        store = ctx.networks.embeddings
        current = ctx.manager.loaded()  # least recently used first: the last is the current model
        if current:
            fits, skipped = store.for_widths(embedding_widths(current[-1].pipe))
        else:  # nothing loaded yet: nothing to measure against, so every readable one is listed
            fits, skipped = store.all(), []
        by_name = {e.name: e for e in store.all()}
        return EmbeddingsResponse(
            loaded={e.name: item(e) for e in fits},
            skipped={**{s.name: item(by_name[s.name]) for s in skipped},
                     **{s.name: {"error": s.reason} for s in store.unreadable()}})

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        ctx.networks.embeddings.refresh()

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def sd_vae() -> list[SDVaeItem]:
        return [SDVaeItem(model_name=f.name, filename=str(f.path)) for f in ctx.networks.vaes.files()]

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        ctx.networks.vaes.refresh()

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[PromptStyleItem]:
        styles = [ctx.styles.get(name) for name in ctx.styles.names()]
        return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in styles if s]

    add_extras_routes(router, ctx, run)
    add_interrogate_routes(router, ctx, run)

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[LatentUpscalerModeItem]:
        return [LatentUpscalerModeItem(name=n) for n in LATENT_UPSCALERS]

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> ScriptsList:
        # ControlNet is built in and takes sd-webui-controlnet's alwayson_scripts entry, so it is listed as there.
        # As A1111: lower-case titles, the scripts of the dropdown first, then the always-on ones.
        always = ["controlnet", *(c.title.lower() for _, c in ctx.service.hooks.controls)]
        return ScriptsList(txt2img=[s.title.lower() for s in ctx.service.scripts("txt2img")] + always,
                           img2img=[s.title.lower() for s in ctx.service.scripts("img2img")] + always)

    @router.get("/extensions")
    def extensions() -> list[dict[str, Any]]:
        """A1111's shape; branch and commit are read from an installed extension's own git checkout."""
        found = ctx.extensions.records if getattr(ctx, "extensions", None) else []
        listed = []
        for r in found:
            git = git_info(r.folder)
            listed.append({"name": r.id, "remote": git.remote or (r.manifest.url if r.manifest else None),
                           "branch": git.branch, "commit_hash": git.commit_hash,
                           "version": r.manifest.version if r.manifest else None, "commit_date": git.commit_date,
                           "enabled": r.enabled})
        return listed

    @router.post("/unload-checkpoint")
    def unload_checkpoint() -> None:
        ctx.service.queue.on_device_now(ctx.manager.unload_all)  # never from under a running job

    @router.post("/reload-checkpoint")
    def reload_checkpoint() -> None:
        name = ctx.options.options.sd_model_checkpoint or getattr(ctx.manager.default_checkpoint(), "name", None)
        if not name:
            raise convert.ApiFieldError([("sd_model_checkpoint", "no checkpoint to load")])
        ctx.service.queue.on_device_now(lambda: ctx.manager.load(name))

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        return memory_report()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        """Every A1111 1.10 option (kept, not acted on, where the studio has no such setting) and the studio's own."""
        return ctx.options.all_options()

    @router.post("/options")
    def set_options(changes: dict[str, Any] = Body(...)) -> bool:
        current = ctx.options.all_options()
        unknown = [k for k in changes if k not in current]
        if unknown:
            raise convert.ApiFieldError([(k, "unknown option") for k in unknown])
        # A client that posts back the whole GET answer sends the folders unchanged: that changes nothing.
        untouched = {k for k in changes if k in _REFUSED_OPTIONS and changes[k] == current[k]}
        changes = {k: v for k, v in changes.items() if k not in untouched}
        paths = sorted(k for k in changes if k in PATH_OPTIONS | A1111_PATH_OPTIONS)
        server_only = sorted(k for k in changes if k in SERVER_ONLY_OPTIONS | A1111_SERVER_ONLY_OPTIONS)
        if paths or server_only:
            raise convert.ForbiddenFieldError(
                [(k, "folder options cannot be changed through the API") for k in paths]
                + [(k, "only the studio's own Settings page can change this") for k in server_only])
        # Validate everything before loading anything, so a bad value changes nothing.
        studio = {k: v for k, v in changes.items() if k in Options.model_fields}
        problems = ctx.options.check_extra(changes)
        try:
            Options.model_validate({**ctx.options.options.model_dump(), **studio})
        except ValidationError as err:
            problems = _pydantic_problems(err.errors()) + problems
        if problems:
            raise convert.ApiFieldError(problems)
        name = changes.get("sd_model_checkpoint")
        if name and name != ctx.options.options.sd_model_checkpoint:
            # On the device, between jobs: loading may evict a model a running job is using.
            loaded = ctx.service.queue.on_device_now(lambda: ctx.manager.load(name))  # raises before selecting
            changes = {**changes, "sd_model_checkpoint": loaded.info.title}  # title has the hash now
        ctx.options.update_extra(changes)  # the studio's options and A1111's kept ones, in one save
        return True

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[SamplerItem]:
        samplers = ctx.service.samplers  # the built-ins, then the extensions'
        return [SamplerItem(name=name, aliases=samplers.aliases(name), options={}) for name in samplers.names()]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[SchedulerItem]:
        return [SchedulerItem(name=convert.scheduler_api_name(label), label=label) for label in SCHEDULE_TYPES]

    add_a1111_routes(router, ctx)  # hypernetworks, script-info, server-stop, ...: backend/api/a1111_routes.py

    return router
