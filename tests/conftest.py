"""Shared fixtures: the network guard and tiny checkpoints written in the real file layouts."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["DO_NOT_TRACK"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint  # noqa: E402

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::"}


def _refuse_off_host(event: str, args) -> None:
    """Audit hook: every socket.connect in this process passes here before it happens."""
    if event != "socket.connect":
        return
    sock, address = args
    if sock.family == getattr(socket, "AF_UNIX", None):
        return
    host = str(address[0] if isinstance(address, tuple) else address)
    if host not in _LOCAL_HOSTS and not host.startswith("127."):
        raise RuntimeError(f"test tried to connect off-host to {address!r}; tests must not use the network")


sys.addaudithook(_refuse_off_host)


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: end-to-end test in headless Chromium")


TINY_SPECS = {
    "sd1.safetensors": TinySpec("sd1"),
    "sd1-inpainting.safetensors": TinySpec("sd1", inpainting=True),
    "sd2-v.safetensors": TinySpec("sd2", v_prediction=True),
    "sdxl.safetensors": TinySpec("sdxl"),
}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A models/Stable-diffusion folder with one tiny checkpoint per family, in the original layout."""
    folder = tmp_path_factory.mktemp("Stable-diffusion")
    for seed, (name, spec) in enumerate(TINY_SPECS.items()):
        write_checkpoint(folder / name, spec, seed=seed)
    write_checkpoint(folder / "sd1-other.safetensors", TinySpec("sd1"), seed=42)
    return folder


@pytest.fixture(scope="session")
def tiny_sd1_file(checkpoint_dir) -> Path:
    return checkpoint_dir / "sd1.safetensors"


@pytest.fixture
def studio_root(tmp_path, checkpoint_dir) -> Path:
    """A fresh studio folder (config, outputs) whose checkpoint folder holds the tiny models."""
    (tmp_path / "models").mkdir()
    return tmp_path


@pytest.fixture
def app_context(studio_root, checkpoint_dir):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    paths = AppPaths(root=studio_root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


@pytest.fixture(scope="session")
def face_models(tmp_path_factory):
    """Shared by the face tests (the full-size GFPGAN and CodeFormer files are written once).

    An A1111 models/ tree: GFPGAN, Codeformer, facexlib (detector + parser), and facexlib-noparse."""
    from tests.fixtures import tiny_faces

    root = tmp_path_factory.mktemp("face-models")
    tiny_faces.write_gfpgan(root / "GFPGAN" / "GFPGANv1.4.pth")
    tiny_faces.write_codeformer(root / "Codeformer" / "codeformer-v0.1.0.pth")
    tiny_faces.write_detector(root / "facexlib" / "detection_Resnet50_Final.pth")
    tiny_faces.write_parsenet(root / "facexlib" / "parsing_parsenet.pth")
    (root / "facexlib-noparse").mkdir()
    os.symlink(root / "facexlib" / "detection_Resnet50_Final.pth",
               root / "facexlib-noparse" / "detection_Resnet50_Final.pth")
    return root

