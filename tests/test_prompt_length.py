"""A prompt over the length limit (Settings: prompt_max_chunks, 32 chunks of 75 tokens by default) is
refused before it is queued: a 422 naming the limit over the API, an error in the UI, and counting it
is linear in its length."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.generation.request import Txt2ImgRequest
from backend.prompts.length import PromptLimit, PromptTooLongError

WORDS = "a red ball, "  # 4 tokens


@pytest.fixture
def client(app_context):
    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(app_context), prefix="/sdapi/v1")
    return TestClient(app)


def test_chunks_are_counted_as_the_encoder_cuts_them():
    limit = PromptLimit(lambda: 2)
    assert limit.chunks("a red ball") == 1
    assert limit.chunks(WORDS * 19) == 2  # 76 tokens: the second chunk starts after the last comma
    assert limit.chunks("a BREAK b BREAK c") == 3
    limit.check(WORDS * 36)  # 144 tokens: two chunks of 72, each broken after its last comma
    with pytest.raises(PromptTooLongError, match="3 chunks of 75 tokens, over the limit of 2"):
        limit.check(WORDS * 37)  # 148 tokens: 72 + 72 + 4
    with pytest.raises(PromptTooLongError, match="over the limit of 2"):
        limit.check("a BREAK b BREAK c")  # short, but three chunks
    with pytest.raises(PromptTooLongError, match="far over the limit"):
        limit.check("x" * 10_000)  # refused without tokenizing
    limit.check("a red" + " " * 100_000 + "\n" * 1_000 + "ball")  # whitespace makes no tokens


def test_a_200k_character_prompt_is_counted_whole():
    # 200,000 characters of four-token phrases: 18 phrases to a chunk (measured linear: 0.07 s at 20k, 0.66 s
    # at 200k characters on the 2-core build machine; no timing here).
    words = 200_000 // len(WORDS)
    assert PromptLimit(lambda: 10_000).chunks(WORDS * words) == -(-words // 18)


def test_the_request_and_the_service_refuse_a_long_prompt_before_the_device(app_context):
    context = app_context.service.request_context
    long = WORDS * 700  # 2,800 tokens: 38 chunks
    with pytest.raises(ValidationError, match="over the limit of 32"):
        Txt2ImgRequest.model_validate({"prompt": long}, context=context)
    with pytest.raises(ValidationError, match="negative prompt is .* over the limit"):
        Txt2ImgRequest.model_validate({"negative_prompt": long}, context=context)
    app_context.options.update(prompt_max_chunks=40)
    Txt2ImgRequest.model_validate({"prompt": long}, context=context)  # the setting is read each time
    app_context.options.update(prompt_max_chunks=32)
    # A request made without the studio's context is still refused by the service, before it queues.
    request = Txt2ImgRequest(prompt=long, width=64, height=64, steps=1, checkpoint="sd1.safetensors",
                             save_images=False)
    with pytest.raises(PromptTooLongError):
        app_context.service.txt2img(request)


def test_the_api_answers_422_naming_the_limit(client):
    body = {"prompt": WORDS * 50_000, "width": 64, "height": 64, "steps": 2,
            "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}, "save_images": False}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("prompt: ") and "limit of 32 chunks" in answer.json()["detail"]
    ok = client.post("/sdapi/v1/txt2img", json={**body, "prompt": WORDS * 100})
    assert ok.status_code == 200, ok.text
