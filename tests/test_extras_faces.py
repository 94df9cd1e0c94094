"""Face restoration where users ask for it: the Extras tab's GFPGAN / CodeFormer sliders and
"Restore faces" on txt2img (setting, infotext, the API's restore_faces). The face models are
the shared full-size random-weight files; the detector is crafted to see a bright square."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.routes import create_api_router
from backend.extras.faces import FaceRestoreError
from backend.extras.postprocess import ExtrasRequest
from backend.images.infotext import parse_infotext
from tests.fixtures.tiny_faces import face_picture, flat_picture
from tests.test_img2img import px

API = "/sdapi/v1"


def _link_face_models(models, face_models, detector=True):
    models.mkdir(exist_ok=True)
    (models / "GFPGAN").symlink_to(face_models / "GFPGAN")
    (models / "Codeformer").symlink_to(face_models / "Codeformer")
    if detector:
        (models / "facexlib").symlink_to(face_models / "facexlib")


@pytest.fixture
def studio(studio_root, app_context, face_models):
    _link_face_models(studio_root / "models", face_models)
    app_context.extras.refresh()
    return app_context


def test_gfpgan_visibility_blends_the_restored_face(studio):
    picture = face_picture()
    run = lambda v: studio.extras_service.run(ExtrasRequest(images=[picture], gfpgan_visibility=v,  # noqa: E731
                                                            save_images=False))
    full, half = run(1.0), run(0.5)
    restored = px(full.images[0])
    assert np.abs(restored - px(picture)).max() > 10  # the face was replaced
    assert np.abs(px(half.images[0]) - px(Image.blend(picture, full.images[0], 0.5))).max() <= 1
    assert full.infotexts == ["GFPGAN visibility: 1"] and half.infotexts == ["GFPGAN visibility: 0.5"]
    assert np.array_equal(restored[:100, :100], px(picture)[:100, :100])  # far from the face: untouched


def test_a_picture_without_a_face_comes_back_unchanged_and_says_so(studio):
    picture = flat_picture()
    result = studio.extras_service.run(ExtrasRequest(images=[picture], codeformer_visibility=1.0,
                                                     save_images=False))
    assert np.array_equal(px(result.images[0]), px(picture))
    assert result.messages == ["CodeFormer: no face found"]
    assert "no face found" in result.html_info


def test_restore_faces_in_txt2img_goes_into_the_infotext(studio):
    client = TestClient(_app(studio), raise_server_exceptions=False)
    payload = {"prompt": "a face", "steps": 2, "width": 64, "height": 64, "seed": 8}
    plain = client.post(f"{API}/txt2img", json=payload).json()
    restored = client.post(f"{API}/txt2img", json={**payload, "restore_faces": True})
    assert restored.status_code == 200, restored.text
    info = restored.json()["info"]
    params = parse_infotext(json.loads(info)["infotexts"][0])
    assert params["Face restoration"] == "CodeFormer"  # the face_restoration_model setting's default
    assert '"restore_faces": true' in info and '"face_restoration_model": "CodeFormer"' in info
    assert "Face restoration" not in parse_infotext(json.loads(plain["info"])["infotexts"][0])
    # The tiny model draws no face: restoration finds none and the pixels are those of the plain run.
    assert restored.json()["images"][0] != plain["images"][0]  # (the PNGs differ: their infotexts do)
    from tests.test_extras import decode
    assert np.array_equal(px(decode(restored.json()["images"][0])), px(decode(plain["images"][0])))


def test_restore_faces_applies_to_a_face(studio):
    studio.options.update(face_restoration_model="GFPGAN")  # the setting decides; GFPGAN is the quicker here
    extras = studio.service.extras
    assert extras.face_restorer() == "GFPGAN"
    picture = face_picture()
    assert np.abs(px(extras.restore_faces(picture)) - px(picture)).max() > 10
    assert np.array_equal(px(extras.restore_faces(flat_picture())), px(flat_picture()))


def test_restore_faces_without_the_detector_fails_before_sampling(studio_root, app_context, face_models):
    _link_face_models(studio_root / "models", face_models, detector=False)
    (studio_root / "models" / "GFPGAN").unlink()
    (studio_root / "models" / "GFPGAN").mkdir()  # GFPGAN's folder without facexlib's files
    client = TestClient(_app(app_context), raise_server_exceptions=False)
    response = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                   "restore_faces": True})
    assert response.status_code == 422
    assert "detection_Resnet50_Final.pth" in response.json()["detail"]
    with pytest.raises(FaceRestoreError, match="GFPGAN"):
        app_context.extras.faces.check_ready("GFPGAN")


def _app(ctx) -> FastAPI:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    return app
