"""Wire the app context, the Gradio UI and the REST API into one server."""
from __future__ import annotations

import argparse
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from backend.api.auth import parse_credentials
from backend.api.controlnet_routes import create_controlnet_router
from backend.api.extension_routes import create_extension_router
from backend.api.hosted_sdxl import create_hosted_sdxl_router
from backend.api.jobs import ApiJobs
from backend.api.routes import create_api_router
from backend.api.sam_routes import sam_router
from backend.app_context import AppContext, AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.extras.upscalers import UPSCALER_FOLDERS
from backend.server_control import ServerControl

log = logging.getLogger("studio")


def exposure_warnings(args: argparse.Namespace, ui_auth: list, api_auth: list) -> list[str]:
    """What to say, once, when others can reach this studio without a password."""
    if not (args.listen or args.share):
        return []
    where = "a public Gradio link" if args.share else "every network interface (--listen)"
    warnings = []
    if not args.nowebui and not ui_auth:
        warnings.append(f"The UI is served on {where} with no password: anyone who can reach it can generate "
                        "and read your outputs. Set --gradio-auth user:password.")
    if (args.api or args.nowebui) and not api_auth:
        warnings.append(f"The API is served on {where} with no password: anyone who can reach it can use it. "
                        "Set --api-auth user:password.")
    return warnings


def listed_origins(value: str | None) -> list[str]:
    """A1111's form: a comma-separated list with no spaces (spaces are forgiven)."""
    return [origin.strip() for origin in (value or "").split(",") if origin.strip()]


def build_http_app(ctx: AppContext, args: argparse.Namespace, ui_auth: list, api_auth: list) -> FastAPI:
    """One FastAPI app: CORS outermost, then the API routes, then the Gradio UI mounted at the root."""
    documented = args.api or args.nowebui
    app = FastAPI(title="Stable Diffusion Studio", docs_url="/docs" if documented else None,
                  redoc_url="/redoc" if documented else None, openapi_url="/openapi.json" if documented else None)
    # Always installed, even allowing no origin: with a CORS middleware on the parent app, Gradio leaves CORS
    # to it, and Gradio's own policy lets any web site call a server reached by a non-localhost name.
    app.add_middleware(CORSMiddleware, allow_origins=listed_origins(args.cors_allow_origins),
                       allow_origin_regex=args.cors_allow_origins_regex, allow_methods=["*"], allow_headers=["*"],
                       allow_credentials=True)
    if documented:
        api_jobs = ApiJobs()  # /sdapi/v1/progress and /interrupt see the hosted-SDXL route's jobs too
        app.include_router(create_api_router(ctx, api_auth, api_jobs), prefix="/sdapi/v1")
        app.include_router(create_controlnet_router(ctx, api_auth), prefix="/controlnet")
        # sd-webui-segment-anything's routes; SAM runs on the device, so its calls wait their turn there.
        app.include_router(sam_router(ctx.extras.segment, api_auth, on_device=ctx.service.queue.on_device_now),
                           prefix="/sam")
        app.include_router(create_extension_router(ctx.service.hooks, api_auth), prefix="/ext")
        app.include_router(create_hosted_sdxl_router(ctx, api_auth, api_jobs), prefix="/v1")
    if not args.nowebui:
        import gradio as gr

        from ui.app import CSS, build_ui

        # A folder path typed into the page is read on this machine: not for visitors of a shared link.
        exposed = args.share or args.listen
        demo = build_ui(ctx, allow_folders=not (exposed or args.hide_ui_dir_config))
        demo.queue(default_concurrency_limit=None)
        # Mounted last: the root mount would otherwise answer for /sdapi and /docs too.
        gr.mount_gradio_app(app, demo, path="/", auth=ui_auth or None, css=CSS, footer_links=["api", "settings"],
                            root_path=f"/{args.subpath.strip('/')}" if args.subpath else None,
                            server_name=server_host(args), server_port=args.port)
        # Kept to end its streams when the server stops; demo.app is another App instance, not the one mounted.
        app.state.gradio_app = next((route.app for route in app.routes
                                     if isinstance(route, Mount) and isinstance(route.app, gr.routes.App)), None)
    return app


def end_gradio_streams(app: FastAPI) -> None:
    """End the page's open Gradio streams (the session heartbeat), as Blocks.close() does for a launched demo.

    Left open, they keep uvicorn waiting its whole graceful-shutdown timeout, then it cancels them with a
    traceback. Call on the server's event loop: Gradio's stop event is an asyncio.Event."""
    if (ui := getattr(app.state, "gradio_app", None)) is not None:
        ui.stop_event.set()


def server_host(args: argparse.Namespace) -> str:
    return "0.0.0.0" if args.listen else "127.0.0.1"


class StudioServer(uvicorn.Server):
    """uvicorn's server; on Ctrl+C it first stops the device queue, so requests waiting on a job can end, and
    when it shuts down it ends the page's streams, so a browser left open does not hold it up."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None],
                 on_shutdown: Callable[[], None] = lambda: None):
        super().__init__(config)
        self.on_exit = on_exit
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Every way of stopping (Ctrl+C, SIGTERM, request_stop) comes here, on the loop, before uvicorn waits
        # for the open connections to close.
        self.on_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig, frame) -> None:
        self._end_jobs_soon()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        """Shut down as Ctrl+C does, from any thread (POST /sdapi/v1/server-stop): the jobs end, requests
        waiting on them get their answers, then uvicorn stops serving and run() returns."""
        self._end_jobs_soon()
        self.should_exit = True

    def _end_jobs_soon(self) -> None:
        # A thread, because a signal handler must not wait on a lock the interrupted code may hold.
        threading.Thread(target=self.on_exit, name="queue-close", daemon=True).start()


def announce_when_started(server: StudioServer, args: argparse.Namespace, api_auth: list) -> None:
    """Say where the studio answers once it does, and open the public link if asked."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    scheme = "https" if args.tls_certfile else "http"
    local_url = f"{scheme}://127.0.0.1:{args.port}"
    log.info("Running on local URL: %s/", local_url)
    if args.api or args.nowebui:
        log.info("API at %s/sdapi/v1 (docs at /docs)%s", local_url, " with HTTP Basic auth" if api_auth else "")
    if args.share and not args.nowebui:
        from gradio import networking

        try:
            public = networking.setup_tunnel("127.0.0.1", args.port, secrets.token_urlsafe(32), None, None)
        except Exception as error:  # noqa: BLE001 - the tunnel's failures are many; the local server goes on
            log.error("Could not create the public link (%s); the studio is still served at %s/", error, local_url)
            return
        log.info("Running on public URL: %s", public)


def serve_studio(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = DeviceSettings.from_flags(args.device, args.no_half, args.lowvram, args.medvram,
                                       precision=args.precision, no_half_vae=args.no_half_vae,
                                       compile=getattr(args, "compile", None))
    paths = AppPaths(root=args.data_dir.resolve(), checkpoint_dirs=[d.resolve() for d in args.ckpt_dir or []],
                     lora_dirs=[d.resolve() for d in args.lora_dir or []],
                     embedding_dirs=[d.resolve() for d in args.embeddings_dir or []],
                     vae_dirs=[d.resolve() for d in args.vae_dir or []],
                     controlnet_dirs=[d.resolve() for d in args.controlnet_dir or []],
                     annotator_dir=args.controlnet_annotator_models_path.resolve()
                     if args.controlnet_annotator_models_path else None,
                     upscaler_dirs={family: [folder.resolve()] for family in UPSCALER_FOLDERS
                                    if (folder := getattr(args, f"{family.lower()}_models_path", None))},
                     gfpgan_dir=args.gfpgan_models_path.resolve() if args.gfpgan_models_path else None,
                     codeformer_dir=args.codeformer_models_path.resolve() if args.codeformer_models_path else None)
    ui_auth = parse_credentials(args.gradio_auth, args.gradio_auth_path)
    api_auth = parse_credentials(args.api_auth)
    ctx = build_app_context(paths, device, command_flags=vars(args))
    if args.ckpt:
        ctx.options.update(sd_model_checkpoint=ctx.manager.find(args.ckpt).title)
    parts = device.describe()
    log.info("device %s: UNet %s, text encoders %s, VAE %s, %s, compile %s (%s); %d checkpoint(s) found",
             parts["device"], parts["unet"], parts["text encoders"], parts["vae"], parts["layout"],
             parts["unet compile"], parts["why"],
             sum(1 for e in ctx.manager.checkpoints() if e.error is None))
    for warning in exposure_warnings(args, ui_auth, api_auth):
        log.warning(warning)
    app = build_http_app(ctx, args, ui_auth, api_auth)
    config = uvicorn.Config(app, host=server_host(args), port=args.port, ssl_keyfile=args.tls_keyfile,
                            ssl_certfile=args.tls_certfile, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = StudioServer(config, on_exit=ctx.service.queue.close, on_shutdown=lambda: end_gradio_streams(app))
    ctx.server_control = ServerControl(server.request_stop)  # for /server-stop, /server-restart, /server-kill
    threading.Thread(target=announce_when_started, args=(server, args, api_auth), name="announce",
                     daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn raises Ctrl+C again once it has shut down: a normal way to stop
    finally:
        ctx.service.queue.close()
    ctx.server_control.exec_if_restarting()  # after the port is free, so the new process can take it
