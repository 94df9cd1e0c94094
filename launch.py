"""Start the studio: install what is missing, build the app context, serve the UI and the API.

    python launch.py            # install what is missing, then serve http://127.0.0.1:7860
    python launch.py --test     # install what is missing (test tools, Chromium too), then run the tests

Flags keep A1111's names (--listen, --port, --share, --api, --ckpt-dir, --no-half, --medvram, ...).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Local Stable Diffusion studio")
    p.add_argument("--test", action="store_true", help="install test tools and run the test suite, then exit")
    p.add_argument("--skip-install", action="store_true", help="do not check or install packages")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 so other machines can connect")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve over a public Gradio link")
    p.add_argument("--api", action="store_true", help="mount the A1111-compatible API under /sdapi/v1")
    p.add_argument("--nowebui", action="store_true", help="serve the API only, without the UI")
    p.add_argument("--data-dir", type=Path, default=ROOT, help="where config.json, styles.csv and outputs live")
    p.add_argument("--ckpt-dir", type=Path, action="append", default=None,
                   help="checkpoint folder (default models/Stable-diffusion); may be given more than once")
    p.add_argument("--ckpt", default=None, help="checkpoint to select at start")
    p.add_argument("--lora-dir", type=Path, action="append", default=None, help="LoRA folder (default models/Lora)")
    p.add_argument("--embeddings-dir", type=Path, action="append", default=None,
                   help="textual-inversion embeddings folder (default models/embeddings)")
    p.add_argument("--vae-dir", type=Path, action="append", default=None, help="VAE folder (default models/VAE)")
    p.add_argument("--controlnet-dir", type=Path, action="append", default=None,
                   help="more ControlNet folders, searched besides models/ControlNet")
    p.add_argument("--controlnet-annotator-models-path", type=Path, default=None,
                   help="folder of the ControlNet preprocessors' weights (default models/annotators)")
    for family in ("ESRGAN", "RealESRGAN", "SwinIR", "HAT", "DAT"):
        p.add_argument(f"--{family.lower()}-models-path", type=Path, default=None,
                       help=f"folder of {family} upscaler models (default models/{family})")
    p.add_argument("--gfpgan-models-path", type=Path, default=None,
                   help="folder of GFPGAN and facexlib's face detection files (default models/GFPGAN)")
    p.add_argument("--codeformer-models-path", type=Path, default=None,
                   help="folder of the CodeFormer model (default models/Codeformer)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: best available)")
    p.add_argument("--no-half", action="store_true", help="run in fp32 even on a GPU")
    p.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32 whatever the rest runs in")
    p.add_argument("--precision", choices=("auto", "full", "half", "bf16", "autocast"), default="auto",
                   help="auto: fp16 on a GPU, bf16 on a CPU that computes it natively (avx512_bf16 / amx), "
                        "else fp32; full: fp32 everywhere; half: fp16 on a GPU, bf16 on a CPU; bf16: bf16; "
                        "autocast: as auto (A1111's name)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="compile the UNet with torch.compile (backend inductor unless named): slow first job at "
                        "each picture size (minutes on a CPU), faster steps after; off by default")
    p.add_argument("--medvram", action="store_true", help="keep only the active model part on the GPU")
    p.add_argument("--lowvram", action="store_true", help="stream weights to the GPU layer by layer (slow)")
    p.add_argument("--hide-ui-dir-config", action="store_true",
                   help="hide fields that read folders on this machine (always hidden with --share/--listen)")
    p.add_argument("--gradio-auth", default=None, help="user:password[,user2:password2] for the UI")
    p.add_argument("--gradio-auth-path", type=Path, default=None,
                   help="file of user:password pairs (one per line or comma-separated) for the UI")
    p.add_argument("--api-auth", default=None,
                   help="user:password[,user2:password2]: HTTP Basic auth on every /sdapi/v1 route")
    p.add_argument("--api-server-stop", action="store_true",
                   help="enable server stop/restart/kill via api (always on when not --listen or --share)")
    p.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing, updating and removing extensions even with --listen or --share")
    p.add_argument("--subpath", default=None,
                   help="serve the UI as if at /SUBPATH, for a reverse proxy that forwards that path")
    p.add_argument("--tls-keyfile", default=None)
    p.add_argument("--tls-certfile", default=None)
    p.add_argument("--disable-tls-verify", action="store_true",
                   help="accepted for A1111 command lines; the studio never calls its own URL, so it changes nothing")
    p.add_argument("--cors-allow-origins", default=None,
                   help="web origins allowed to call the studio from a browser, comma-separated "
                        "(e.g. http://localhost:3000,https://my.site); none by default")
    p.add_argument("--cors-allow-origins-regex", default=None,
                   help="a regular expression for more allowed origins, e.g. https://.*\\.my\\.site")
    return p.parse_args(argv)


def run_tests(extra: list[str]) -> int:
    from backend.install import ensure_chromium, ensure_requirements

    ensure_requirements(ROOT / "requirements.txt", ROOT / "tests" / "requirements.txt")
    ensure_chromium()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.call([sys.executable, "-m", "pytest", *extra], cwd=ROOT, env=env)


def serve(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub unless the user asks
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ui.server import serve_studio

    serve_studio(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--test" in argv:
        return run_tests([a for a in argv if a != "--test"])
    args = parse_args(argv)
    if not args.skip_install:
        from backend.install import ensure_requirements

        ensure_requirements(ROOT / "requirements.txt")
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
