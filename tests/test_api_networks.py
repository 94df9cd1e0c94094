"""/sdapi/v1 routes for LoRAs, embeddings and VAEs, and the per-request VAE override."""
from __future__ import annotations

import base64
import io

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.routes import create_api_router
from tests.fixtures.tiny_networks import write_embedding, write_kohya_lora
from tests.test_vae_choice import write_vae

API = "/sdapi/v1"


@pytest.fixture
def client(app_context) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(app_context), prefix=API)
    return TestClient(app, raise_server_exceptions=False)


def test_loras_are_listed_after_refresh_with_their_training_metadata(app_context, client):
    assert client.get(f"{API}/loras").json() == []
    pipe = app_context.manager.load("sd1.safetensors").pipe
    write_kohya_lora(pipe, app_context.networks.loras.folders[0] / "ink.safetensors",
                     metadata={"ss_output_name": "inky", "ss_base_model_version": "sd_v1"})
    assert client.post(f"{API}/refresh-loras").status_code == 200
    [lora] = client.get(f"{API}/loras").json()
    assert lora["name"] == "ink" and lora["alias"] == "inky" and lora["metadata"]["ss_base_model_version"] == "sd_v1"


def test_embeddings_split_into_loaded_and_skipped_for_the_current_model(app_context, client):
    pipe = app_context.manager.load("sd1.safetensors").pipe
    folder = app_context.networks.embeddings.folders[0]
    width = pipe.text_encoder.config.hidden_size
    write_embedding(folder / "good.pt", width, vectors=2)
    write_embedding(folder / "wide.safetensors", width + 4)
    client.post(f"{API}/refresh-embeddings")
    body = client.get(f"{API}/embeddings").json()
    assert body["loaded"]["good"] == {"step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                      "shape": width, "vectors": 2}
    assert list(body["skipped"]) == ["wide"]


def test_vaes_are_listed_and_override_settings_picks_one_for_one_request(app_context, client):
    pipe = app_context.manager.load("sd1.safetensors").pipe
    path = write_vae(pipe, app_context.networks.vaes.folders[0] / "other.safetensors")
    client.post(f"{API}/refresh-vae")
    assert client.get(f"{API}/sd-vae").json() == [{"model_name": "other.safetensors", "filename": str(path)}]
    payload = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 1,
               "override_settings": {"sd_model_checkpoint": "sd1.safetensors", "sd_vae": "other.safetensors"}}
    r = client.post(f"{API}/txt2img", json=payload)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert "VAE: other.safetensors" in image.info["parameters"]
    assert client.get(f"{API}/options").json()["sd_vae"] == "Automatic"  # the setting itself is unchanged


def test_listing_and_maintenance_routes_answer_in_a1111_shapes(app_context, client):
    styles = client.get(f"{API}/prompt-styles").json()
    assert styles and set(styles[0]) == {"name", "prompt", "negative_prompt"}
    assert [u["name"] for u in client.get(f"{API}/upscalers").json()][0] == "None"
    assert [m["name"] for m in client.get(f"{API}/latent-upscale-modes").json()] == [
        "Latent", "Latent (nearest)", "Latent (bicubic)"]
    assert {r["name"] for r in client.get(f"{API}/face-restorers").json()} == {"CodeFormer", "GFPGAN"}
    # The shipped extensions' scripts, then the always-on ones, lower-case as A1111 lists them.
    scripts = client.get(f"{API}/scripts").json()
    assert scripts["txt2img"] == ["prompts from file or textbox", "x/y/z plot", "controlnet", "dynamic prompts"]
    assert scripts["img2img"] == ["sd upscale", "prompts from file or textbox", "x/y/z plot", "controlnet",
                                  "dynamic prompts"]
    memory = client.get(f"{API}/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0

    app_context.manager.load("sd1.safetensors")
    assert client.post(f"{API}/unload-checkpoint").status_code == 200
    assert app_context.manager.loaded() == []
    assert client.post(f"{API}/reload-checkpoint").status_code == 200
    assert len(app_context.manager.loaded()) == 1
