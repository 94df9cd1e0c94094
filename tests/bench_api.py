"""Benchmark: what the HTTP API and the queue add, measured side by side in one run.

    python -m tests.bench_api [--width-mult 1] [--steps 4] [--size 64] [--jobs 8] [--repeats 5]

Prints, for the same fixture checkpoint and request:
  overhead    one POST /sdapi/v1/txt2img through uvicorn on localhost (JSON, validation, conversion,
              the queue, base64 PNG with infotext) / the same request to GenerationService directly;
              also the difference in milliseconds
  throughput  N jobs sent at once over HTTP from N clients (they wait in the queue and run one at a
              time) / the same N jobs run one after another on the service: 1.0 means the queue
              costs nothing
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from backend.api.routes import create_api_router  # noqa: E402
from backend.app_context import AppPaths, build_app_context  # noqa: E402
from backend.devices import DeviceSettings  # noqa: E402
from backend.generation.job import JobControl  # noqa: E402
from backend.generation.request import Txt2ImgRequest  # noqa: E402
from tests.bench_txt2img import median_seconds  # noqa: E402
from tests.fixtures.launched import free_port  # noqa: E402
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width-mult", type=int, default=1, help="UNet width multiplier of the fixture model")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    # Written on a thread that then ends: as in the server, the main thread never runs torch, so the
    # device thread's OpenMP team is the only one (queue.py says why that matters).
    writer = threading.Thread(target=write_checkpoint, args=(work / "models" / "a.safetensors",
                                                             TinySpec("sd1", width=args.width_mult), 1))
    writer.start()
    writer.join()
    ctx = build_app_context(AppPaths(root=work, checkpoint_dirs=[work / "models"], builtin_checkpoints=[]),
                            DeviceSettings.from_flags())
    ctx.options.update(sd_model_checkpoint="a.safetensors", live_previews_enable=False)
    payload = {"prompt": "a cat", "steps": args.steps, "width": args.size, "height": args.size,
               "sampler_name": "Euler", "seed": 1}
    request = Txt2ImgRequest(prompt="a cat", steps=args.steps, width=args.size, height=args.size,
                             sampler_name="Euler", seed=1, save_images=False)

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/sdapi/v1/txt2img"

    def direct():
        ctx.service.txt2img(request, JobControl())

    def over_http(client: httpx.Client):
        response = client.post(url, json=payload, timeout=600)
        assert response.status_code == 200, response.text

    with httpx.Client() as client:
        direct_s = median_seconds(direct, args.repeats)
        http_s = median_seconds(lambda: over_http(client), args.repeats)
    print(f"one {args.size}px {args.steps}-step job: service {direct_s * 1000:.1f} ms, "
          f"HTTP API {http_s * 1000:.1f} ms")
    print(f"overhead    ratio {http_s / direct_s:.3f}  (+{(http_s - direct_s) * 1000:.1f} ms per request)")

    start = time.perf_counter()
    for _ in range(args.jobs):
        direct()
    serial_s = time.perf_counter() - start
    clients = [httpx.Client() for _ in range(args.jobs)]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(over_http, clients))
    queued_s = time.perf_counter() - start
    for c in clients:
        c.close()
    print(f"{args.jobs} jobs: one after another on the service {serial_s:.2f} s, all at once over HTTP "
          f"{queued_s:.2f} s ({args.jobs / queued_s:.2f} jobs/s)")
    print(f"throughput  ratio {queued_s / serial_s:.3f}")
    server.should_exit = True


if __name__ == "__main__":
    main()
