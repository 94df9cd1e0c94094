"""Wire the app context, the Gradio UI and the REST API into one server."""
from __future__ import annotations

import argparse
import logging

from backend.api.auth import parse_credentials
from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings

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


def serve_studio(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = DeviceSettings.from_flags(args.device, args.no_half, args.lowvram, args.medvram)
    paths = AppPaths(root=args.data_dir.resolve(), checkpoint_dirs=[d.resolve() for d in args.ckpt_dir or []],
                     lora_dirs=[d.resolve() for d in args.lora_dir or []],
                     embedding_dirs=[d.resolve() for d in args.embeddings_dir or []],
                     vae_dirs=[d.resolve() for d in args.vae_dir or []])
    ui_auth = parse_credentials(args.gradio_auth, args.gradio_auth_path)
    api_auth = parse_credentials(args.api_auth)
    ctx = build_app_context(paths, device, command_flags=vars(args))
    if args.ckpt:
        ctx.options.update(sd_model_checkpoint=ctx.manager.find(args.ckpt).title)
    log.info("device %s (%s); %d checkpoint(s) found", device.device, device.dtype,
             sum(1 for e in ctx.manager.checkpoints() if e.error is None))
    for warning in exposure_warnings(args, ui_auth, api_auth):
        log.warning(warning)
    host = "0.0.0.0" if args.listen else "127.0.0.1"

    from backend.api.routes import create_api_router

    if args.nowebui:
        import uvicorn
        from fastapi import FastAPI

        app = FastAPI(title="Stable Diffusion Studio API")
        app.include_router(create_api_router(ctx, api_auth), prefix="/sdapi/v1")
        try:
            uvicorn.run(app, host=host, port=args.port, ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile)
        finally:
            ctx.service.queue.close()
        return

    from ui.app import CSS, build_ui

    # A folder path typed into the page is read on this machine: not for visitors of a shared link.
    exposed = args.share or args.listen
    demo = build_ui(ctx, allow_folders=not (exposed or args.hide_ui_dir_config))
    demo.queue(default_concurrency_limit=None)
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=args.port, share=args.share, prevent_thread_lock=True,
        auth=ui_auth or None, ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile,
        ssl_verify=not args.disable_tls_verify,
        root_path=f"/{args.subpath.strip('/')}" if args.subpath else None,
        app_kwargs={"docs_url": "/docs", "redoc_url": "/redoc"} if args.api else None,  # Gradio turns them off
        css=CSS, quiet=False, footer_links=["api", "settings"])
    if args.api:
        app.include_router(create_api_router(ctx, api_auth), prefix="/sdapi/v1")
        log.info("API mounted at %s/sdapi/v1%s", local_url.rstrip("/"), " (HTTP Basic auth)" if api_auth else "")
    try:
        demo.block_thread()  # returns on Ctrl+C
    finally:
        ctx.service.queue.close()
