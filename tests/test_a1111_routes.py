"""The rest of A1111 1.10's /sdapi/v1 routes: every one exists with its method, and the ones added in
backend/api/a1111_routes.py answer in A1111's shapes (server-stop and -restart also on a launched studio)."""
from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from backend.api.routes import create_api_router
from backend.networks.hypernetworks import hypernetwork_files
from backend.server_control import ServerControl
from tests.fixtures import tiny_upscalers
from tests.fixtures.launched import launched_process

API = "/sdapi/v1"
ROOT = Path(__file__).resolve().parent.parent

# A1111 1.10's modules/api/api.py routes (and the built-in Lora extension's), as (method, path under /sdapi/v1).
A1111_ROUTES = [
    ("POST", "/txt2img"), ("POST", "/img2img"), ("POST", "/extra-single-image"), ("POST", "/extra-batch-images"),
    ("POST", "/png-info"), ("GET", "/progress"), ("POST", "/interrupt"), ("POST", "/skip"),
    ("GET", "/options"), ("POST", "/options"), ("GET", "/cmd-flags"), ("GET", "/samplers"), ("GET", "/schedulers"),
    ("GET", "/upscalers"), ("GET", "/latent-upscale-modes"), ("GET", "/sd-models"), ("GET", "/sd-vae"),
    ("GET", "/hypernetworks"), ("GET", "/face-restorers"), ("GET", "/realesrgan-models"), ("GET", "/prompt-styles"),
    ("GET", "/embeddings"), ("POST", "/refresh-embeddings"), ("POST", "/refresh-checkpoints"),
    ("POST", "/refresh-vae"), ("POST", "/create/embedding"), ("POST", "/create/hypernetwork"),
    ("POST", "/train/embedding"), ("POST", "/train/hypernetwork"), ("GET", "/memory"),
    ("POST", "/unload-checkpoint"), ("POST", "/reload-checkpoint"), ("GET", "/scripts"), ("GET", "/script-info"),
    ("GET", "/extensions"), ("POST", "/server-kill"), ("POST", "/server-restart"), ("POST", "/server-stop"),
    ("GET", "/sd-modules"), ("POST", "/refresh-loras"), ("GET", "/loras"),
    ("POST", "/interrogate"),
]


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def stop(self) -> None:
        self.calls.append("stop")

    def restart(self) -> None:
        self.calls.append("restart")

    def kill(self) -> None:
        self.calls.append("kill")


def _context(root, **flags):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    (root / "models").mkdir(exist_ok=True)
    return build_app_context(AppPaths(root=root, builtin_checkpoints=[]), DeviceSettings.from_flags(device="cpu", precision="full"),
                             command_flags=flags)


def _client(ctx) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    return TestClient(app, raise_server_exceptions=False)


def _routes(ctx) -> set[tuple[str, str]]:
    return {(method, route.path) for route in create_api_router(ctx).routes if isinstance(route, APIRoute)
            for method in route.methods}


@pytest.fixture
def ctx(tmp_path):
    return _context(tmp_path)


@pytest.fixture
def client(ctx) -> TestClient:
    return _client(ctx)


@pytest.mark.parametrize(("method", "path"), A1111_ROUTES)
def test_every_a1111_route_exists_with_its_method(ctx, method, path):
    assert (method, path) in _routes(ctx)


# --- lists -------------------------------------------------------------------------

def test_hypernetworks_lists_the_files_by_stem_sorted(client, ctx):
    folder = ctx.root / "models" / "hypernetworks"
    for name in ("b-style.pt", "sub/A-anime.safetensors", "c.pth", "d.ckpt", "notes.txt", "None.pt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    answer = client.get(f"{API}/hypernetworks").json()
    assert [h["name"] for h in answer] == ["b-style", "c", "d", "A-anime"]  # by path, ignoring case, as A1111
    assert answer[0]["path"] == str(folder / "b-style.pt")
    assert set(answer[0]) == {"name", "path"}


def test_hypernetwork_files_keeps_the_first_of_a_name_and_skips_missing_folders(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "style.pt").write_bytes(b"x")
    (tmp_path / "two" / "style.safetensors").write_bytes(b"x")
    found = hypernetwork_files([tmp_path / "one", tmp_path / "two", tmp_path / "absent"])
    assert [(f.name, f.path) for f in found] == [("style", tmp_path / "one" / "style.pt")]


def test_realesrgan_models_lists_the_realesrgan_upscalers_found(tmp_path):
    models = tmp_path / "models"
    for family in ("RealESRGAN", "ESRGAN"):
        (models / family).mkdir(parents=True)
    tiny_upscalers.write_realesrgan_x2plus(models / "RealESRGAN" / "RealESRGAN_x2plus.pth")
    tiny_upscalers.write_compact(models / "ESRGAN" / "realesr-general-x4v3.pth")  # named R-ESRGAN: listed
    tiny_upscalers.write_old_esrgan(models / "ESRGAN" / "4x_other.pth")  # plain ESRGAN: not listed
    answer = _client(_context(tmp_path)).get(f"{API}/realesrgan-models").json()
    assert answer == [
        {"name": "R-ESRGAN 2x+", "path": str(models / "RealESRGAN" / "RealESRGAN_x2plus.pth"), "scale": 2},
        {"name": "R-ESRGAN General 4xV3", "path": str(models / "ESRGAN" / "realesr-general-x4v3.pth"), "scale": 4},
    ]


def test_realesrgan_models_is_empty_without_files(client):
    assert client.get(f"{API}/realesrgan-models").json() == []


def test_sd_modules_lists_the_vae_files_as_sd_vae_does(tmp_path):
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    (tmp_path / "models" / "VAE" / "vae-ft-mse.safetensors").write_bytes(b"x")
    client = _client(_context(tmp_path))
    modules = client.get(f"{API}/sd-modules").json()
    assert modules == [{"model_name": "vae-ft-mse.safetensors",
                        "filename": str(tmp_path / "models" / "VAE" / "vae-ft-mse.safetensors")}]
    assert modules == client.get(f"{API}/sd-vae").json()


def test_script_info_describes_the_scripts_listed_by_scripts(client, ctx):
    infos = client.get(f"{API}/script-info").json()
    scripts = client.get(f"{API}/scripts").json()
    assert sorted(i["name"] for i in infos if not i["is_img2img"]) == sorted(scripts["txt2img"])
    assert sorted(i["name"] for i in infos if i["is_img2img"]) == sorted(scripts["img2img"])
    for info in infos:
        assert set(info) == {"name", "is_alwayson", "is_img2img", "args"}
        for arg in info["args"]:
            assert set(arg) == {"label", "value", "minimum", "maximum", "step", "choices"}
    controlnet = next(i for i in infos if i["name"] == "controlnet")
    assert controlnet["is_alwayson"] is True
    assert len(controlnet["args"]) == ctx.options.options.control_net_unit_count
    assert controlnet["args"][0]["value"]["enabled"] is False
    upscale = next(i for i in infos if i["name"] == "sd upscale")
    assert (upscale["is_alwayson"], upscale["is_img2img"]) == (False, True)
    info, overlap, upscaler, scale = upscale["args"]
    assert "Will upscale the image" in info["value"]
    assert (overlap["label"], overlap["value"], overlap["minimum"], overlap["maximum"], overlap["step"]) == \
        ("Tile overlap", 64, 0, 256, 16)
    assert upscaler["label"] == "Upscaler" and upscaler["choices"] == ctx.extras.upscalers.names()
    assert (scale["label"], scale["value"], scale["minimum"], scale["maximum"], scale["step"]) == \
        ("Scale Factor", 2.0, 1.0, 4.0, 0.05)


@pytest.mark.parametrize("path", ["/create/embedding", "/create/hypernetwork", "/train/embedding",
                                  "/train/hypernetwork"])
def test_training_routes_are_501_in_the_api_error_shape(client, path):
    r = client.post(f"{API}{path}", json={"name": "x", "num_vectors_per_token": 1})
    assert r.status_code == 501
    body = r.json()
    assert body["error"] == "NotImplemented"
    assert body["detail"].startswith("training is not supported in this studio yet (")
    assert body["errors"] == [{"field": "", "message": body["detail"]}]


# --- server stop, restart, kill ----------------------------------------------------

SERVER_ROUTES = {("POST", "/server-stop"), ("POST", "/server-restart"), ("POST", "/server-kill")}


@pytest.mark.parametrize(("flags", "offered"), [
    ({}, True),
    ({"listen": True}, False),
    ({"share": True}, False),
    ({"listen": True, "api_server_stop": True}, True),
    ({"api_server_stop": True}, True),
])
def test_server_routes_only_where_nobody_else_reaches_the_studio_or_when_asked(tmp_path, flags, offered):
    assert SERVER_ROUTES & _routes(_context(tmp_path, **flags)) == (SERVER_ROUTES if offered else set())


def test_server_routes_call_the_server_control(client, ctx):
    ctx.server_control = FakeControl()
    r = client.post(f"{API}/server-stop")
    assert (r.status_code, r.text) == (200, "Stopping.")
    assert client.post(f"{API}/server-restart").status_code == 200
    assert client.post(f"{API}/server-kill").status_code == 200
    assert ctx.server_control.calls == ["stop", "restart", "kill"]


def test_server_routes_are_503_without_a_server_control(client):
    for path in ("/server-stop", "/server-restart", "/server-kill"):
        r = client.post(f"{API}{path}")
        assert r.status_code == 503 and r.json()["detail"].startswith("not available")


def test_a_page_of_another_site_cannot_stop_the_studio(client, ctx):
    ctx.server_control = FakeControl()
    r = client.post(f"{API}/server-stop", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and ctx.server_control.calls == []
    assert client.post(f"{API}/server-stop", headers={"Origin": "http://testserver"}).status_code == 200


def test_server_control_restart_asks_for_a_shutdown_and_execs_only_then():
    shut = []
    control = ServerControl(lambda: shut.append(1), argv=["unused"])
    control.exec_if_restarting()  # not asked: returns
    control.stop()
    assert shut == [1] and not control.restart_requested
    control.restart()
    assert shut == [1, 1] and control.restart_requested


def test_server_control_execs_the_same_command_line_and_kill_exits_at_once():
    # In a child process: execv and os._exit would end the test run.
    restart = ("from backend.server_control import ServerControl\n"
               "c = ServerControl(lambda: None, argv=['-c', 'print(\"again\")'])\n"
               "c.restart(); c.exec_if_restarting(); print('not replaced')\n")
    done = subprocess.run([sys.executable, "-c", restart], check=False, capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, "again\n"), done.stderr
    kill = ("import time\nfrom backend.server_control import ServerControl\n"
            "ServerControl(lambda: None, kill_delay=0.1).kill(); print('answered', flush=True); time.sleep(30)\n"
            "print('still alive')\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", kill], check=False, capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, "answered\n"), done.stderr
    assert time.monotonic() - started < 20


class _OpenPage(threading.Thread):
    """What an open page holds: Gradio's session heartbeat, a stream the server itself must end when it stops
    (else uvicorn waits out its graceful-shutdown timeout and cancels it, with a traceback)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = f"{url}gradio_api/heartbeat/{secrets.token_hex(8)}"
        self.connected = threading.Event()
        self.ended: str | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=60) as stream:
                for _ in stream.iter_lines():
                    self.connected.set()
            self.ended = "cleanly"
        except httpx.HTTPError as error:
            self.ended = repr(error)

    def open(self) -> _OpenPage:
        self.start()
        assert self.connected.wait(timeout=30), "the heartbeat stream did not open"
        return self


def test_a_launched_studio_restarts_and_stops_through_the_api(tmp_path, tiny_sd1_file):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(tiny_sd1_file, models / "tiny-sd1.safetensors")
    log = tmp_path / "launch.log"
    long_job = {"prompt": "a long job", "steps": 150, "n_iter": 40, "width": 64, "height": 64, "seed": 1}
    answers: dict[str, httpx.Response] = {}
    for url, process in launched_process(tmp_path, models):
        with httpx.Client(base_url=url, timeout=300) as caller, httpx.Client(base_url=url, timeout=30) as api:
            page = _OpenPage(url).open()
            assert api.post("/sdapi/v1/server-restart").status_code == 200
            deadline = time.monotonic() + 150
            # execv keeps the process id: the same process starts again and says so, on the same port.
            while log.read_text().count("Running on local URL") < 2:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"the studio did not come back:\n{log.read_text()[-3000:]}"
                time.sleep(0.3)
            page.join(timeout=30)
            assert page.ended == "cleanly"  # the old process ended the page's stream itself
            page = _OpenPage(url).open()
            job = threading.Thread(target=lambda: answers.update(txt2img=caller.post("/sdapi/v1/txt2img",
                                                                                      json=long_job)))
            job.start()
            while api.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.2)
            assert api.post("/sdapi/v1/server-stop").text == "Stopping."
            exit_code = process.wait(timeout=60)  # a hang fails here instead of waiting for 6000 steps
            job.join(timeout=30)
            page.join(timeout=30)
        assert exit_code == 0, log.read_text()[-3000:]
        assert page.ended == "cleanly"
        assert "Traceback" not in log.read_text() and "graceful shutdown exceeded" not in log.read_text()
        assert answers["txt2img"].status_code == 200  # the running job ended and answered with what it made
        assert len(answers["txt2img"].json()["images"]) < long_job["n_iter"]
