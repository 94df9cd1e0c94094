"""Interrogate: a BLIP caption from models/BLIP (a tiny random BLIP in the save_pretrained layout), the API route,
the img2img button, and what happens without files or with a hostile one."""
from __future__ import annotations

import base64
import io
import pickle

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from transformers import BlipForConditionalGeneration, BlipProcessor

from backend.api.routes import create_api_router
from backend.interrogate import InterrogateError
from tests.fixtures.tiny_blip import write_blip

API = "/sdapi/v1"


def picture(colour=(200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", (48, 40), (20, 40, 160))
    ImageDraw.Draw(image).ellipse((8, 6, 40, 34), fill=colour)
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def blip_source(tmp_path_factory):
    return write_blip(tmp_path_factory.mktemp("blip") / "blip-image-captioning-tiny")


@pytest.fixture
def studio(app_context, blip_source):
    target = app_context.root / "models" / "BLIP" / blip_source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(blip_source, target_is_directory=True)
    return app_context


@pytest.fixture
def client(app_context):
    app = FastAPI()
    app.include_router(create_api_router(app_context), prefix=API)
    return TestClient(app, raise_server_exceptions=False)


def transformers_caption(folder, image, **generation) -> str:
    """What transformers itself makes of the same folder: the reference the studio's loader must match."""
    model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    with torch.inference_mode():
        tokens = model.generate(**processor(images=image, return_tensors="pt"), **generation)
    return processor.decode(tokens[0], skip_special_tokens=True).strip()


def test_the_caption_is_the_one_transformers_makes_of_the_same_files(studio, blip_source):
    studio.options.update(interrogate_clip_min_length=4, interrogate_clip_max_length=10)
    caption = studio.interrogate.interrogate(picture(), "clip")
    assert caption and caption == transformers_caption(blip_source, picture(), num_beams=1, min_length=4,
                                                        max_length=10)
    assert studio.interrogate.interrogate(picture(), "clip") == caption  # same picture, same caption


def test_the_interrogate_settings_steer_generation(studio):
    studio.options.update(interrogate_clip_min_length=2, interrogate_clip_max_length=4)
    short = studio.interrogate.interrogate(picture())
    studio.options.update(interrogate_clip_min_length=12, interrogate_clip_max_length=14)
    long = studio.interrogate.interrogate(picture())
    assert len(short.split()) <= 3 < len(long.split())  # max_length counts [DEC] and [SEP] too
    studio.options.update(interrogate_clip_num_beams=3, interrogate_clip_min_length=4, interrogate_clip_max_length=10,
                          interrogate_keep_models_in_memory=True)
    first = studio.interrogate.interrogate(picture())
    assert studio.interrogate._kept is not None  # kept for the next caption, as the setting says
    assert studio.interrogate.interrogate(picture()) == first


def test_the_route_answers_as_a1111(studio, client):
    answer = client.post(f"{API}/interrogate", json={"image": b64(picture()), "model": "clip"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"caption": studio.interrogate.interrogate(picture())}


def test_without_files_the_route_and_the_button_say_what_to_put_where(app_context, client):
    answer = client.post(f"{API}/interrogate", json={"image": b64(picture())})
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert "BLIP" in detail and str((app_context.root / "models" / "BLIP").resolve()) in detail
    booru = client.post(f"{API}/interrogate", json={"image": b64(picture()), "model": "deepdanbooru"})
    assert booru.status_code == 501 and "deepdanbooru is not supported" in booru.json()["detail"]
    assert client.post(f"{API}/interrogate", json={"image": b64(picture()), "model": "wd14"}).status_code == 422
    assert client.post(f"{API}/interrogate", json={"model": "clip"}).status_code == 422  # no image

    from ui.interrogate import caption_for

    with pytest.warns(UserWarning, match="models/BLIP|BLIP"):
        assert caption_for(app_context, picture(), "kept prompt") == "kept prompt"


class _Hostile:
    ran = []

    def __reduce__(self):
        return (_Hostile.ran.append, ("ran",))


def test_a_hostile_weights_file_is_refused_with_nothing_run_and_the_studio_keeps_serving(studio, blip_source,
                                                                                          client, tmp_path):
    hostile = tmp_path / "hostile-blip"
    hostile.mkdir()
    for f in blip_source.iterdir():
        if f.name != "model.safetensors":
            (hostile / f.name).write_bytes(f.read_bytes())
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Hostile()}))
    target = studio.root / "models" / "BLIP"
    (target / blip_source.name).unlink()
    (target / "hostile").symlink_to(hostile, target_is_directory=True)
    with pytest.raises(InterrogateError, match="cannot be used"):
        studio.interrogate.interrogate(picture())
    assert _Hostile.ran == []
    answer = client.post(f"{API}/interrogate", json={"image": b64(picture())})
    assert answer.status_code == 422 and "cannot be used" in answer.json()["detail"]
    assert client.get(f"{API}/sd-models").status_code == 200  # still serving


def test_the_button_writes_the_caption_into_the_prompt(studio):
    from ui.interrogate import caption_for

    assert caption_for(studio, picture(), "old prompt") == studio.interrogate.interrogate(picture())
    with pytest.warns(UserWarning, match="picture"):
        assert caption_for(studio, None, "old prompt") == "old prompt"


def test_a_file_saved_by_older_transformers_loads_and_a_replaced_model_is_reloaded(studio, blip_source, tmp_path):
    from safetensors.torch import load_file, save_file

    # transformers 4.2x (the Salesforce downloads) also saved position_ids and the tied output layer.
    old = tmp_path / "blip-old-layout"
    old.mkdir()
    for f in blip_source.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    tensors = load_file(old / "model.safetensors")
    tensors["text_decoder.bert.embeddings.position_ids"] = torch.arange(64).expand((1, -1)).contiguous()
    tensors["text_decoder.cls.predictions.decoder.weight"] = \
        tensors["text_decoder.bert.embeddings.word_embeddings.weight"].clone()
    tensors["text_decoder.cls.predictions.decoder.bias"] = tensors["text_decoder.cls.predictions.bias"].clone()
    save_file(tensors, old / "model.safetensors")
    studio.options.update(interrogate_clip_min_length=4, interrogate_clip_max_length=10,
                          interrogate_keep_models_in_memory=True)
    reference = studio.interrogate.interrogate(picture())
    target = studio.root / "models" / "BLIP"
    (target / blip_source.name).unlink()
    (target / "old").symlink_to(old, target_is_directory=True)
    assert studio.interrogate.interrogate(picture()) == reference  # the same weights, the older layout

    # The user swaps in other weights while the model is kept: the next caption uses the new file.
    kept = studio.interrogate._kept
    generator = torch.Generator().manual_seed(1)
    save_file({k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
               for k, v in tensors.items()}, old / "model.safetensors")
    studio.interrogate.interrogate(picture())
    assert studio.interrogate._kept is not kept
