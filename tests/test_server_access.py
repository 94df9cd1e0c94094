"""launch.py with passwords and TLS, as a user would start it: the UI asks for its login, every API
route for the API password, and Gradio's file route serves nothing of the studio's own files.

Every request here goes over HTTPS with a certificate made for the test (openssl), so TLS is tested too.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fixtures.launched import ROOT, launch_studio
from ui.server import exposure_warnings

API_USER, UI_USER = ("bot", "api-pw"), ("artist", "ui-pw")
TOOL_SITE = "https://tool.example"  # a web page allowed to call the studio (--cors-allow-origins)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def guarded_studio(tmp_path_factory, checkpoint_dir):
    root = tmp_path_factory.mktemp("studio")
    key, cert = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(checkpoint_dir / "sd1.safetensors", models / "tiny-sd1.safetensors")
    (root / "users.txt").write_text("artist:ui-pw\nguest:guest-pw\n")
    outputs = root / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True)
    (outputs / "00001-1.txt").write_text("an output")
    for url in launch_studio(root, models, "--gradio-auth-path", str(root / "users.txt"),
                             "--api-auth", ":".join(API_USER), "--tls-keyfile", str(key), "--tls-certfile", str(cert),
                             "--disable-tls-verify", "--cors-allow-origins", f"{TOOL_SITE},http://localhost:3000",
                             "--cors-allow-origins-regex", r"https://[a-z]+\.artists\.example", "--subpath", "studio"):
        assert url.startswith("https://")
        yield url.rstrip("/"), root


def client(url: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=url, verify=False, timeout=120, **kwargs)  # the test's own certificate


def test_the_ui_asks_for_its_login(guarded_studio):
    url, _ = guarded_studio
    with client(url) as anyone:
        assert anyone.get("/config").status_code == 401
        assert anyone.get("/gradio_api/info").status_code == 401
        assert anyone.post("/login", data={"username": "artist", "password": "nope"}).status_code == 400
    with client(url) as artist:
        assert artist.post("/login", data=dict(zip(("username", "password"), UI_USER))).status_code == 200
        assert artist.get("/config").status_code == 200
    with client(url) as guest:  # the file's second line
        assert guest.post("/login", data={"username": "guest", "password": "guest-pw"}).status_code == 200


def test_the_api_asks_for_its_own_password_on_every_route(guarded_studio):
    url, _ = guarded_studio
    with client(url) as anyone, client(url, auth=UI_USER) as ui_user, client(url, auth=API_USER) as bot:
        for path in ["/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/cmd-flags", "/sdapi/v1/sd-models",
                     "/sdapi/v1/memory"]:
            assert anyone.get(path).status_code == 401, path
            assert ui_user.get(path).status_code == 401, path  # the UI's password is not the API's
        assert anyone.post("/sdapi/v1/interrupt").status_code == 401
        progress = bot.get("/sdapi/v1/progress")
        assert progress.status_code == 200 and progress.json()["state"]["job_count"] == 0
        flags = bot.get("/sdapi/v1/cmd-flags").json()
        assert flags["api_auth"] == "<set>" and "api-pw" not in str(flags)
        assert anyone.get("/docs").status_code == 200
        documented = anyone.get("/openapi.json").json()["paths"]
        assert {"/sdapi/v1/txt2img", "/sdapi/v1/progress", "/sdapi/v1/interrupt"} <= set(documented)
        made = bot.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert made.status_code == 200 and len(made.json()["images"]) == 1


@pytest.fixture
def logged_in(guarded_studio):
    url, root = guarded_studio
    with client(url) as artist:
        assert artist.post("/login", data=dict(zip(("username", "password"), UI_USER))).status_code == 200
        yield artist, root


def test_the_file_route_serves_none_of_the_studios_own_files(logged_in):
    artist, root = logged_in
    targets = {
        "config": root / "config.json",
        "passwords": root / "users.txt",
        "checkpoint": root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors",
        "an output by its path": root / "outputs" / "txt2img-images" / "00001-1.txt",
        "the code": ROOT / "launch.py",
        "the system": Path("/etc/passwd"),
    }
    attempts = {name: f"/gradio_api/file={path}" for name, path in targets.items()}
    outputs = root / "outputs" / "txt2img-images"
    attempts |= {
        "relative to the working folder": "/gradio_api/file=launch.py",
        "up from outputs": f"/gradio_api/file={outputs}/../../config.json",
        "up from outputs, encoded": f"/gradio_api/file={outputs}/..%2F..%2Fconfig.json",
        "home": f"/gradio_api/file={Path.home()}/.bashrc",
        "up from the working folder": "/gradio_api/file=../../../../etc/passwd",
        "a local URL": f"/gradio_api/file={artist.base_url}sdapi/v1/cmd-flags",
    }
    answers = {name: artist.get(path) for name, path in attempts.items()}
    served = {name: (r.status_code, r.text[:80]) for name, r in answers.items() if r.status_code not in (403, 404)}
    assert not served, served  # 401 would only mean the login did not take: not what is tested here


def preflight(http: httpx.Client, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return http.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                       "Access-Control-Request-Headers": "authorization,content-type"})


def test_only_the_allowed_web_origins_may_call_the_studio_from_a_browser(guarded_studio):
    url, _ = guarded_studio
    allowed = [TOOL_SITE, "http://localhost:3000", "https://sketch.artists.example"]  # the list and the regex
    refused = ["https://evil.example", "https://tool.example.evil.example", "https://sketch.artists.example.evil",
               "null", "http://localhost:3001"]
    with client(url) as browser, client(url, auth=API_USER) as bot:
        for path in ["/sdapi/v1/txt2img", "/gradio_api/queue/join", "/config"]:  # the API and Gradio's routes
            for origin in allowed:
                answer = preflight(browser, path, origin)
                assert answer.status_code == 200, (path, origin)
                assert answer.headers["access-control-allow-origin"] == origin, (path, origin)
                assert "authorization" in answer.headers["access-control-allow-headers"].lower()
            for origin in refused:
                answer = preflight(browser, path, origin)
                assert "access-control-allow-origin" not in answer.headers, (path, origin, answer.headers)
        # A simple request is answered (the browser then hides it), but carries no permission for the page.
        for origin, allow in [(TOOL_SITE, TOOL_SITE), ("https://evil.example", None)]:
            progress = bot.get("/sdapi/v1/progress", headers={"Origin": origin})
            assert progress.status_code == 200
            assert progress.headers.get("access-control-allow-origin") == allow, origin


def test_subpath_makes_the_ui_links_start_with_it(logged_in):
    artist, _ = logged_in
    config = artist.get("/config").json()
    assert config["root"].rstrip("/").endswith("/studio"), config["root"]


def test_exposed_without_a_password_warns_plainly_once_per_part():
    def args(**flags):
        base = dict(listen=False, share=False, api=False, nowebui=False)
        return argparse.Namespace(**(base | flags))

    assert exposure_warnings(args(), [], []) == []  # this machine only
    assert exposure_warnings(args(listen=True), [("a", "b")], []) == []  # UI has a password, no API
    [ui] = exposure_warnings(args(share=True), [], [])
    assert "public Gradio link" in ui and "no password" in ui and "--gradio-auth" in ui
    ui, api = exposure_warnings(args(listen=True, api=True), [], [])
    assert "--api-auth" in api and "--listen" in api
    assert exposure_warnings(args(listen=True, api=True), [("a", "b")], [("c", "d")]) == []
