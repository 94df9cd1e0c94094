"""The API with many clients: progress, interrupt and skip on one's own job, the queue, concurrent requests
for different checkpoints/samplers/LoRAs, auth on every route, cmd-flags, and URL images.

Requests go through httpx to the FastAPI app, the way A1111 clients send them; the routes run in
FastAPI's worker threads, so requests really overlap.
"""
from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import threading

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from backend.api.routes import create_api_router
from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from backend.images.infotext import parse_infotext
from backend.images.loading import ImageInputError
from backend.images.remote import public_address
from tests.fixtures.tiny_networks import write_kohya_lora

API = "/sdapi/v1"
SMALL = {"prompt": "a tiny cat", "steps": 3, "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler",
         "seed": 7}


def make_app(ctx, credentials=None) -> FastAPI:
    app = FastAPI()
    app.include_router(create_api_router(ctx, credentials), prefix=API)
    return app


def scenario(app: FastAPI, body, auth=None):
    """Run `body(client)` against the app in an event loop; routes run in worker threads."""
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://studio", auth=auth, timeout=120) as client:
            return await body(client)

    return asyncio.run(run())


async def wait_for(client, predicate, what: str, job: asyncio.Task, timeout: float = 60):
    """Poll the caller's progress until `predicate` holds; fail at once if `job` ends first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await client.get(f"{API}/progress")).json()
        if predicate(body):
            return body
        if job.done():
            raise AssertionError(f"the job ended before {what}: {job.result().status_code} {job.result().text[:300]}")
        assert asyncio.get_running_loop().time() < deadline, f"never saw {what}; last progress {body}"
        await asyncio.sleep(0.005)


def pixels(response_json) -> list[bytes]:
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB").tobytes() for b in response_json["images"]]


@pytest.fixture
def ctx(app_context):
    app_context.options.update(sd_model_checkpoint="sd1.safetensors", show_progress_every_n_steps=2)
    return app_context


def test_progress_during_a_job_then_interrupt_ends_it_early(ctx):
    async def body(client):
        idle = (await client.get(f"{API}/progress")).json()
        assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_task"] is None
        job = asyncio.create_task(client.post(f"{API}/txt2img", json={
            **SMALL, "steps": 150, "n_iter": 3, "force_task_id": "task-mine"}))
        seen = await wait_for(client, lambda b: b["state"]["sampling_step"] >= 4 and b["current_image"],
                              "a few steps with a preview", job)
        no_image = (await client.get(f"{API}/progress", params={"skip_current_image": True})).json()
        assert (await client.post(f"{API}/interrupt")).status_code == 200
        return seen, no_image, await job

    seen, no_image, response = scenario(make_app(ctx), body)
    assert seen["current_task"] == "task-mine" and seen["state"]["job"] == "task-mine"
    assert seen["state"]["sampling_steps"] == 150 and seen["state"]["job_count"] == 3
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(seen["current_image"])))
    assert preview.format == "PNG" and preview.size == (8, 8)  # the cheap preview: one pixel per latent
    assert no_image["current_image"] is None and no_image["state"]["job"] == "task-mine"
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) < 3  # 3 x 150 steps were asked for; the interrupt ended it


def test_queued_job_shows_its_place_and_interrupt_reaches_only_the_callers_job(ctx):
    """Another user's job holds the device; the API caller waits, sees its place, and gives up."""
    others = JobControl(owner="session:someone-else")
    other_result = {}
    ctx.manager.device_lock.acquire()  # the other job takes its turn, then waits here
    other = threading.Thread(target=lambda: other_result.update(r=ctx.service.txt2img(
        Txt2ImgRequest(prompt="theirs", width=64, height=64, steps=2, seed=1, save_images=False), others)))
    other.start()

    async def body(client):
        try:
            job = asyncio.create_task(client.post(f"{API}/txt2img", json=SMALL))
            queued = await wait_for(client, lambda b: b["state"]["queue_position"] == 1, "the queued job", job)
            await client.post(f"{API}/interrupt")
            response = await job
        finally:
            ctx.manager.device_lock.release()
        return queued, response

    queued, response = scenario(make_app(ctx), body)
    other.join(60)
    assert queued["textinfo"] == "In queue: 1 job(s) ahead" and queued["progress"] == 0
    assert response.status_code == 200 and response.json()["images"] == []  # it never ran
    assert not others.interrupted and not other_result["r"].interrupted and len(other_result["r"].images) == 1


def test_concurrent_clients_get_exactly_their_own_checkpoint_sampler_and_lora(ctx):
    pipe = ctx.manager.load("sd1.safetensors").pipe
    write_kohya_lora(pipe, ctx.networks.loras.folders[0] / "ink.safetensors", strength=1.0)
    ctx.networks.loras.refresh()
    asks = [
        {**SMALL, "prompt": "a cat <lora:ink:1>"},
        {**SMALL, "sampler_name": "DPM++ 2M", "override_settings": {"sd_model_checkpoint": "sd1-other.safetensors"}},
        {**SMALL, "prompt": "a cat"},
        {**SMALL, "sampler_name": "Euler a", "seed": 8},
    ]

    async def alone(client):
        return [(await client.post(f"{API}/txt2img", json=a)).json() for a in asks]

    async def together(client):
        responses = await asyncio.gather(*[client.post(f"{API}/txt2img", json=a) for a in asks * 2])
        return [r.json() for r in responses]

    app = make_app(ctx)
    expected = scenario(app, alone)
    got = scenario(app, together)
    assert len({p for e in expected for p in pixels(e)}) == len(asks)  # four different pictures
    for index, response in enumerate(got):
        ask, reference = asks[index % len(asks)], expected[index % len(asks)]
        assert pixels(response) == pixels(reference), f"request {index} got someone else's picture"
        infotext = json.loads(response["info"])["infotexts"][0]
        assert f"Sampler: {ask['sampler_name']}" in infotext
        model = ask.get("override_settings", {}).get("sd_model_checkpoint", "sd1.safetensors")
        assert parse_infotext(infotext)["Model"] == model.removesuffix(".safetensors")
        assert ("Lora hashes" in infotext) == ("<lora:" in ask["prompt"])
    assert ctx.options.options.sd_model_checkpoint.startswith("sd1.safetensors")  # overrides were per request


def test_a_job_that_fails_inside_fails_alone(ctx, checkpoint_dir):
    broken = checkpoint_dir / "zz-broken.safetensors"
    broken.write_bytes(b"not a checkpoint at all")
    ctx.manager.refresh()
    try:
        async def body(client):
            bad = client.post(f"{API}/txt2img", json={
                **SMALL, "override_settings": {"sd_model_checkpoint": "zz-broken.safetensors"}})
            good = client.post(f"{API}/txt2img", json=SMALL)
            return await asyncio.gather(bad, good)

        bad, good = scenario(make_app(ctx), body)
    finally:
        broken.unlink()
        ctx.manager.refresh()
    assert bad.status_code == 422 and "zz-broken" in bad.json()["detail"]
    assert good.status_code == 200 and len(good.json()["images"]) == 1


def test_every_route_asks_for_the_password_when_api_auth_is_set(ctx):
    app = make_app(ctx, [("artist", "s3cret"), ("bot", "tok:en")])
    routes = [(path, method.upper()) for path, methods in app.openapi()["paths"].items() for method in methods]
    assert {f"{API}/progress", f"{API}/interrupt", f"{API}/skip", f"{API}/txt2img", f"{API}/options",
            f"{API}/cmd-flags"} <= {p for p, _ in routes}

    async def body(client):
        answers = {}
        for path, method in routes:
            for label, auth in (("none", None), ("wrong", ("artist", "nope")), ("other user's", ("bot", "s3cret"))):
                answers[(path, label)] = (await client.request(method, path, auth=auth)).status_code
            answers[(path, "right")] = (await client.request(method, path, auth=("bot", "tok:en"))).status_code
        return answers

    answers = scenario(app, body)
    refused = {k: v for k, v in answers.items() if k[1] != "right" and v != 401}
    assert not refused, refused
    let_in = {k: v for k, v in answers.items() if k[1] == "right" and v == 401}
    assert not let_in, let_in


def test_progress_and_interrupt_are_per_api_user(ctx):
    app = make_app(ctx, [("ann", "a"), ("ben", "b")])

    async def body(client):
        job = asyncio.create_task(client.post(f"{API}/txt2img", json={**SMALL, "steps": 150, "n_iter": 2},
                                              auth=("ann", "a")))
        while (await client.get(f"{API}/progress", auth=("ann", "a"))).json()["state"]["sampling_step"] < 2:
            await asyncio.sleep(0.005)
        bens_view = (await client.get(f"{API}/progress", auth=("ben", "b"))).json()
        await client.post(f"{API}/interrupt", auth=("ben", "b"))  # not ben's job: nothing happens
        await asyncio.sleep(0.2)
        still = (await client.get(f"{API}/progress", auth=("ann", "a"))).json()
        await client.post(f"{API}/interrupt", auth=("ann", "a"))
        return bens_view, still, await job

    bens_view, still, response = scenario(app, body)
    assert bens_view["current_task"] is None and bens_view["progress"] == 0
    assert still["current_task"] is not None and not still["state"]["interrupted"]
    assert response.status_code == 200 and len(response.json()["images"]) < 2


def test_cmd_flags_never_show_secrets(ctx):
    ctx.command_flags = {"api_auth": "artist:s3cret", "gradio_auth": "me:pw", "gradio_auth_path": None,
                         "port": 7860, "listen": True, "tls_keyfile": "/etc/key.pem"}

    async def body(client):
        return await client.get(f"{API}/cmd-flags")

    response = scenario(make_app(ctx), body)
    flags = response.json()
    assert flags["port"] == 7860 and flags["listen"] is True
    assert flags["api_auth"] == flags["gradio_auth"] == flags["tls_keyfile"] == "<set>"
    assert flags["gradio_auth_path"] is None
    assert "s3cret" not in response.text and "pw" not in response.text and "key.pem" not in response.text


# --- images as URLs --------------------------------------------------------------

@pytest.fixture
def local_png_server():
    """A web server on this machine with a PNG on it: the API must never fetch from it."""
    hits = []
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(png, "PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png.getvalue())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], hits
    server.shutdown()


def test_url_images_are_refused_unless_enabled_and_never_from_local_addresses(ctx, local_png_server):
    port, hits = local_png_server
    urls = [f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/x.png", f"http://[::1]:{port}/x.png",
            f"http://[::ffff:127.0.0.1]:{port}/x.png", "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/x.png", "http://192.168.1.2/x.png", "https://100.64.0.1/x.png", "http://0.0.0.0/"]

    async def body(client):
        off = await client.post(f"{API}/img2img", json={**SMALL, "init_images": [urls[0]]})
        forbidden = await client.post(f"{API}/options", json={"api_enable_requests": True})
        ctx.options.update(api_enable_requests=True)  # the owner turns it on in Settings
        on = [await client.post(f"{API}/img2img", json={**SMALL, "init_images": [u]}) for u in urls]
        mask = await client.post(f"{API}/img2img", json={**SMALL, "init_images": [urls[0]], "mask": urls[5]})
        return off, forbidden, on, mask

    off, forbidden, on, mask = scenario(make_app(ctx), body)
    assert off.status_code == 422 and "init_images.0" in off.json()["detail"]
    assert "turned off" in off.json()["detail"]
    assert forbidden.status_code == 403 and "api_enable_requests" in forbidden.json()["detail"]
    for url, response in zip(urls, on):
        assert response.status_code == 422, (url, response.text)
        assert "loopback, link-local or private" in response.json()["detail"], (url, response.text)
    fields = {e["field"] for e in mask.json()["errors"]}
    assert fields == {"init_images.0", "mask"}
    assert hits == []  # nothing was ever fetched


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "169.254.169.254", "10.1.2.3", "172.16.0.1",
                                     "192.168.0.1", "100.64.0.1", "0.0.0.0", "::ffff:10.0.0.1", "fe80::1",
                                     "fc00::1", "224.0.0.1"])
def test_non_public_addresses_are_refused(address):
    with pytest.raises(ImageInputError, match="loopback, link-local or private"):
        public_address(address, 80, "the image")


def test_a_public_address_literal_passes_the_check():
    assert public_address("93.184.215.14", 80, "the image") == "93.184.215.14"  # checked, not connected
