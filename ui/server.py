"""Wire the app context, the Gradio UI and the REST API into one server."""
from __future__ import annotations

import argparse
import logging

from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings

log = logging.getLogger("studio")


def _auth(spec: str | None):
    if not spec:
        return None
    pairs = [item.split(":", 1) for item in spec.split(",") if ":" in item]
    return [(user.strip(), password.strip()) for user, password in pairs]


def serve_studio(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = DeviceSettings.from_flags(args.device, args.no_half, args.lowvram, args.medvram)
    paths = AppPaths(root=args.data_dir.resolve(), checkpoint_dirs=[d.resolve() for d in args.ckpt_dir or []],
                     lora_dirs=[d.resolve() for d in args.lora_dir or []],
                     embedding_dirs=[d.resolve() for d in args.embeddings_dir or []],
                     vae_dirs=[d.resolve() for d in args.vae_dir or []])
    ctx = build_app_context(paths, device)
    if args.ckpt:
        ctx.options.update(sd_model_checkpoint=ctx.manager.find(args.ckpt).title)
    log.info("device %s (%s); %d checkpoint(s) found", device.device, device.dtype,
             sum(1 for e in ctx.manager.checkpoints() if e.error is None))
    host = "0.0.0.0" if args.listen else "127.0.0.1"

    if args.nowebui:
        import uvicorn
        from fastapi import FastAPI

        from backend.api.routes import create_api_router

        app = FastAPI(title="Stable Diffusion Studio API")
        app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
        uvicorn.run(app, host=host, port=args.port)
        return

    from ui.app import CSS, build_ui

    # A folder path typed into the page is read on this machine: not for visitors of a shared link.
    exposed = args.share or args.listen
    demo = build_ui(ctx, allow_folders=not (exposed or args.hide_ui_dir_config))
    demo.queue(default_concurrency_limit=None)
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=args.port, share=args.share, prevent_thread_lock=True,
        auth=_auth(args.gradio_auth), ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile,
        css=CSS, quiet=False, footer_links=["api", "settings"])
    if args.api:
        from backend.api.routes import create_api_router

        app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
        log.info("API mounted at %s/sdapi/v1", local_url.rstrip("/"))
    demo.block_thread()
