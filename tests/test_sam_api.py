"""The /sam routes as sd-webui-segment-anything's clients call them: raw JSON payloads copied from the shapes
its scripts/api.py documents (dino_* fields included), answers with the extension's keys, errors in the
studio's A1111 style plus the extension's `msg`, and the default-model rule."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.sam_routes import sam_router
from backend.extras.segment import SamLibrary
from tests.fixtures.tiny_sam import picture, write_tiny_sam

NAME = "sam_vit_b_01ec64.pth"  # a tiny model under a released model's name: names are only names


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / NAME)


def client_for(folder, runs: list | None = None) -> tuple[TestClient, SamLibrary]:
    library = SamLibrary([folder], torch.device("cpu"))
    on_device = None
    if runs is not None:
        def on_device(work):
            runs.append(work)
            return work()
    app = FastAPI()
    app.include_router(sam_router(library, on_device=on_device), prefix="/sam")
    return TestClient(app), library


@pytest.fixture
def api(tmp_path, sam_file):
    shutil.copy(sam_file, tmp_path / NAME)
    return client_for(tmp_path)


def extension_payload(**fields) -> dict:
    """A client's body as the extension's README scripts send it (dino off, every dino_* field present)."""
    body = {"sam_model_name": NAME, "input_image": b64(picture(96, 80)),
            "sam_positive_points": [[20.5, 20.0]], "sam_negative_points": [],
            "dino_enabled": False, "dino_model_name": "GroundingDINO_SwinT_OGC (694MB)", "dino_text_prompt": "",
            "dino_box_threshold": 0.3, "dino_preview_checkbox": False, "dino_preview_boxes_selection": None}
    body.update(fields)
    return body


def test_heartbeat_and_model_list(api, tmp_path):
    client, _ = api
    assert client.get("/sam/heartbeat").json() == {"msg": "Success!"}
    assert client.get("/sam/sam-model").json() == [NAME]
    shutil.copy(tmp_path / NAME, tmp_path / "sam_vit_l_0b3195.pth")  # appears without a restart
    assert client.get("/sam/sam-model").json() == [NAME, "sam_vit_l_0b3195.pth"]


def test_predict_answers_three_of_each_in_the_extensions_keys(tmp_path, sam_file):
    shutil.copy(sam_file, tmp_path / NAME)
    runs: list = []
    client, library = client_for(tmp_path, runs)
    response = client.post("/sam/sam-predict", json=extension_payload())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"msg", "blended_images", "masks", "masked_images"}
    assert body["msg"] == "SAM inference with 0 box, 1 positive prompts, 0 negative prompts done."
    assert all(len(body[k]) == 3 for k in ("blended_images", "masks", "masked_images"))
    direct = library.predict(NAME, picture(96, 80), [(20.5, 20.0)])
    source = np.asarray(picture(96, 80))
    for index, expected in enumerate(direct.masks):
        mask, blended, cut = (decode(body[k][index]) for k in ("masks", "blended_images", "masked_images"))
        assert mask.size == blended.size == cut.size == (96, 80)
        assert np.array_equal(np.asarray(mask) > 127, expected)
        assert cut.mode == "RGBA"
        cut = np.asarray(cut)
        assert (cut[~expected] == 0).all() and np.array_equal(cut[expected][:, :3], source[expected])
        assert np.array_equal(np.asarray(blended.convert("RGB"))[~expected], source[~expected])
    assert len(runs) == 1  # the model work went through on_device
    assert library.encoder_runs == 1
    again = client.post("/sam/sam-predict", json=extension_payload(sam_positive_points=[[70, 60]],
                                                                   sam_negative_points=[[5, 5]]))
    assert again.status_code == 200 and "1 positive prompts, 1 negative prompts" in again.json()["msg"]
    assert library.encoder_runs == 1  # the second click reused the picture's embedding


def test_minimal_payload_negative_points_only_and_a_box(api):
    client, _ = api
    image = b64(picture(96, 80))
    only_negative = client.post("/sam/sam-predict", json={"input_image": image, "sam_negative_points": [[10, 10]]})
    assert only_negative.status_code == 200, only_negative.text
    boxed = client.post("/sam/sam-predict", json={"input_image": f"data:image/png;base64,{image}",
                                                  "sam_box": [5, 5, 50, 45]})
    assert boxed.status_code == 200 and boxed.json()["msg"].startswith("SAM inference with 1 box")


def test_default_model_when_the_extensions_default_is_absent(api, tmp_path):
    client, _ = api
    body = extension_payload()
    del body["sam_model_name"]  # the extension's default, sam_vit_h_4b8939.pth, is not installed
    for request in (body, extension_payload(sam_model_name="sam_vit_h_4b8939.pth")):
        response = client.post("/sam/sam-predict", json=request)
        assert response.status_code == 200, response.text
        assert f"Used {NAME}, the only SAM model installed" in response.json()["msg"]
    missing = client.post("/sam/sam-predict", json=extension_payload(sam_model_name="sam_hq_vit_h.pth"))
    assert missing.status_code == 404
    assert "sam_hq_vit_h.pth" in missing.json()["detail"] and NAME in missing.json()["detail"]
    shutil.copy(tmp_path / NAME, tmp_path / "sam_vit_l_0b3195.pth")
    client.get("/sam/sam-model")
    two = client.post("/sam/sam-predict", json=body)  # two models, neither the default: no guessing
    assert two.status_code == 404 and "sam_vit_h_4b8939.pth" in two.json()["detail"]


def test_bad_requests_get_a_reason_and_the_route_keeps_serving(api):
    client, _ = api
    cases = {
        "GroundingDINO": extension_payload(dino_enabled=True, dino_text_prompt="a cat"),
        "at least one point": extension_payload(sam_positive_points=[]),
        "positive point 1 (500, 20) is outside the 96x80 picture": extension_payload(sam_positive_points=[[500, 20]]),
        "two numbers": extension_payload(sam_positive_points=[[1, 2, 3]]),
        "sam_box": extension_payload(sam_box=[1, 2, 3]),
        "input_image": extension_payload(input_image="not an image"),
    }
    for needle, body in cases.items():
        response = client.post("/sam/sam-predict", json=body)
        assert response.status_code == 422, (needle, response.text)
        answer = response.json()
        assert needle in answer["detail"] and answer["msg"] == answer["detail"], answer
        assert answer["error"]
    missing = client.post("/sam/sam-predict", json={"sam_positive_points": [[1, 1]]})
    assert missing.status_code == 422 and "input_image" in missing.json()["detail"]
    assert client.post("/sam/sam-predict", json=extension_payload()).status_code == 200


def test_hostile_model_file_is_refused_over_the_api(api, tmp_path):
    from tests.fixtures.tiny_sam import write_hostile_sam

    client, _ = api
    marker = tmp_path / "ran"
    write_hostile_sam(tmp_path / "sam_vit_h_4b8939.pth", marker)
    response = client.post("/sam/sam-predict", json=extension_payload(sam_model_name="sam_vit_h_4b8939.pth"))
    assert response.status_code == 422 and "refused to load" in response.json()["detail"]
    assert not marker.exists()
    assert client.post("/sam/sam-predict", json=extension_payload()).status_code == 200


def square_mask(size=(96, 80), box=(30, 30, 50, 50)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_dilate_mask_moves_the_edge_by_half_the_amount_as_the_extension(api):
    client, _ = api
    image = b64(picture(96, 80))
    response = client.post("/sam/dilate-mask", json={"input_image": image, "mask": b64(square_mask()),
                                                     "dilate_amount": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"blended_image", "mask", "masked_image"}
    grown = np.asarray(decode(body["mask"])) > 127
    rows, cols = np.nonzero(grown)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (25, 54, 25, 54)  # 5 px each side
    assert decode(body["masked_image"]).mode == "RGBA" and decode(body["blended_image"]).size == (96, 80)
    default = client.post("/sam/dilate-mask", json={"input_image": image, "mask": b64(square_mask())}).json()
    assert np.array_equal(np.asarray(decode(default["mask"])) > 127, grown)  # dilate_amount defaults to 10
    shrunk = client.post("/sam/dilate-mask", json={"input_image": image, "mask": b64(square_mask()),
                                                   "dilate_amount": -10}).json()
    assert int((np.asarray(decode(shrunk["mask"])) > 127).sum()) == 10 * 10
    small = client.post("/sam/dilate-mask", json={"input_image": image, "mask": b64(square_mask((48, 40),
                                                                                                 (15, 15, 25, 25))),
                                                  "dilate_amount": 0}).json()
    assert decode(small["mask"]).size == (96, 80)  # another size is stretched to the picture, as A1111 does
    too_much = client.post("/sam/dilate-mask", json={"input_image": image, "mask": b64(square_mask()),
                                                     "dilate_amount": 100000})
    assert too_much.status_code == 422 and "dilate_amount" in too_much.json()["detail"]
