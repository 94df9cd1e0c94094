"""ControlNet preprocessors: maps that follow the picture, weights read safely from models/annotators.

Weight files are written by tests/fixtures/tiny_annotators.py in the real file layouts (full-size
networks, seeded or hand-set values), so the real loading code runs; pictures are small (64-128 px)
because the networks are full size.
"""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.control.preprocessors import (
    AnnotatorLoadError,
    AnnotatorMissingError,
    PreprocessorLibrary,
    UnknownPreprocessorError,
)
from tests.fixtures import tiny_annotators as ta

ROOT = Path(__file__).resolve().parent.parent
HED, PIDINET, MIDAS = "ControlNetHED.pth", "table5_pidinet.pth", "dpt_hybrid-midas-501f0c75.pt"
BODY, HAND, FACE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"
# where tests put each part of the dot person (x, y) in a 64x128 picture
PERSON = {1: (32, 44), 0: (32, 24), 14: (22, 16), 8: (26, 76), 9: (26, 98), 10: (26, 118)}


@pytest.fixture(scope="module")
def annotators(tmp_path_factory):
    """models/annotators with every file the weight preprocessors need (about 1 GB: removed afterwards)."""
    folder = tmp_path_factory.mktemp("annotators")
    ta.write_hed(folder / HED, seed=0)
    ta.write_pidinet(folder / PIDINET, seed=0)
    ta.write_body(folder / BODY)
    ta.write_hand(folder / HAND, seed=0)
    ta.write_face(folder / FACE)
    ta.write_midas(folder / MIDAS, seed=0)
    ta.write_depth_anything(folder / "depth-anything", seed=0)
    ta.write_dpt(folder / "dpt-hybrid", seed=0)  # found by its config's model_type, not its name
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def library(annotators):
    return PreprocessorLibrary(annotators, device="cpu", cache_size=8)  # every network stays loaded


def picture(seed: int, size=(96, 64)) -> Image.Image:
    """Grey with a few coloured shapes, different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 128, np.uint8)
    for _ in range(4):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(8, 30)), y0 + int(rng.integers(8, 30))), colour, -1)
        else:
            cv2.circle(img, (x0 + 10, y0 + 10), int(rng.integers(4, 12)), colour, -1)
    return Image.fromarray(img)


def person(dx: int = 0) -> Image.Image:
    """A 64x128 grey picture with one soft coloured dot per body part, shifted right by dx."""
    h, w = 128, 64
    img = np.full((h, w, 3), 128.0)
    yy, xx = np.mgrid[0:h, 0:w]
    for part, (x, y) in PERSON.items():
        dot = np.exp(-((xx - x - dx) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))[..., None]
        img = img * (1 - dot) + np.array(ta.DOT_RGB[ta.BODY_PARTS[part]], float) * dot
    return Image.fromarray(img.round().astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --- names, sliders, aliases ---

def test_specs_list_none_first_with_the_extensions_sliders(tmp_path):
    lib = PreprocessorLibrary(tmp_path)
    specs = {s.name: s for s in lib.specs()}
    assert lib.specs()[0].name == "none" and specs["none"].resolution is None
    canny = specs["canny"]
    assert (canny.threshold_a.minimum, canny.threshold_a.maximum, canny.threshold_a.value) == (1, 255, 100)
    assert (canny.threshold_b.minimum, canny.threshold_b.maximum, canny.threshold_b.value) == (1, 255, 200)
    assert canny.binary and not canny.weight_files
    xdog = specs["scribble_xdog"].threshold_a
    assert (xdog.minimum, xdog.maximum, xdog.value) == (1, 64, 32)
    assert specs["openpose"].weight_files == (BODY,)
    assert set(specs["openpose_full"].weight_files) == {BODY, HAND, FACE}
    assert specs["depth_midas"].weight_files == (MIDAS,) and specs["depth_midas"].resolution.value == 512


@pytest.mark.parametrize("alias, name", [
    ("depth", "depth_midas"), ("hed", "softedge_hed"), ("pidinet", "softedge_pidinet"),
    ("fake_scribble", "scribble_hed"), ("scribble", "invert"), ("pidinet_scribble", "scribble_pidinet"),
    ("HED_SAFE", "softedge_hedsafe"), ("invert (from white bg & black line)", "invert"), ("Canny", "canny"),
])
def test_aliases_resolve(tmp_path, alias, name):
    assert PreprocessorLibrary(tmp_path).find(alias).name == name


def test_unknown_name_raises_naming_it_and_the_choices(tmp_path):
    lib = PreprocessorLibrary(tmp_path)
    with pytest.raises(UnknownPreprocessorError, match="'depth_zoe_xl'") as err:
        lib.run("depth_zoe_xl", picture(0))
    assert "canny" in str(err.value) and "openpose_full" in str(err.value)


# --- weightless preprocessors ---

def test_canny_map_is_binary_follows_thresholds_and_has_the_working_size(tmp_path):
    lib = PreprocessorLibrary(tmp_path)
    img = np.full((100, 150, 3), 0, np.uint8)
    cv2.rectangle(img, (30, 20), (110, 80), (255, 255, 255), -1)  # strong edges
    cv2.circle(img, (130, 50), 10, (25, 25, 25), -1)  # a faint one
    source = Image.fromarray(img)
    default = pixels(lib.run("canny", source, resolution=64))
    assert default.shape == (64, 96, 3)  # shorter side = resolution, aspect kept
    assert set(np.unique(default)) == {0, 255}
    assert (default == lib.run("canny", source, 64, 100, 200)).all()  # None -> the slider defaults
    # the square's border lands where the square is at the working size (x 30..110 -> 19..70)
    rows = np.where(default[:, :, 0].any(axis=1))[0]
    cols = np.where(default[:, :, 0].any(axis=0))[0]
    assert 10 <= rows.min() <= 15 and 49 <= rows.max() <= 54 and 17 <= cols.min() <= 21
    sensitive = pixels(lib.run("canny", source, 64, 5, 20))
    assert sensitive[:, 75:, 0].sum() > 0 and default[:, 75:, 0].sum() == 0  # low thresholds see the faint circle
    assert pixels(lib.run("canny", source, 128)).shape == (128, 192, 3)
    assert pixels(lib.run("canny", source)).shape == (512, 768, 3)  # the slider's default resolution
    with pytest.raises(ValueError, match="out of range"):
        lib.run("canny", source, 100_000)


def test_none_and_invert_keep_the_size_and_invert_drawings(tmp_path):
    lib = PreprocessorLibrary(tmp_path)
    src = picture(3, size=(70, 50))
    assert (pixels(lib.run("none", src, resolution=512)) == pixels(src)).all()
    assert (pixels(lib.run("invert", src)) == 255 - pixels(src)).all()
    drawing = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # transparent paper counts as white
    drawing.paste((0, 0, 0, 255), (10, 10, 20, 20))
    inverted = pixels(lib.run("invert", drawing))
    assert inverted[0, 0].tolist() == [0, 0, 0] and inverted[15, 15].tolist() == [255, 255, 255]


def test_xdog_lineart_shuffle_and_tile(tmp_path):
    lib = PreprocessorLibrary(tmp_path)
    paper = np.full((64, 96, 3), 255, np.uint8)
    cv2.line(paper, (10, 10), (10, 54), (0, 0, 0), 1)  # a pen line
    cv2.line(paper, (60, 10), (60, 54), (235, 235, 235), 1)  # a faint pencil line
    loose, default = (pixels(lib.run("scribble_xdog", Image.fromarray(paper), 64, t))[:, :, 0] for t in (4, None))
    assert set(np.unique(loose)) == {0, 255}
    assert loose[:, :30].any() and loose[:, 30:].any()  # a low threshold keeps the faint line
    assert default[:, :30].any() and not default[:, 30:].any()  # the default drops it
    src = picture(5)
    lines = pixels(lib.run("lineart_standard", src, 64))
    assert lines[:, :, 0].max() > 100 and lines[:, :, 0].mean() < 60  # white lines on black
    shuffled = pixels(lib.run("shuffle", src, 64))
    assert (shuffled == pixels(lib.run("shuffle", src, 64))).all()  # reproducible
    assert not (shuffled == pixels(src)).all()
    assert lib.run("tile_resample", src, threshold_a=2.0).size == (48, 32)
    assert (pixels(lib.run("tile_resample", src)) == pixels(src)).all()  # rate 1: unchanged


# --- weight preprocessors on their files ---

@pytest.mark.parametrize("name, values", [
    ("softedge_hed", None), ("softedge_hedsafe", {0, 127, 255}), ("scribble_hed", {0, 255}),
    ("softedge_pidinet", None), ("softedge_pidisafe", {0, 127, 255}), ("scribble_pidinet", {0, 255}),
    ("depth_anything", None), ("depth_dpt", None),
])
def test_weight_preprocessors_follow_the_input(library, name, values):
    a, b = (pixels(library.run(name, picture(seed), resolution=64)) for seed in (1, 2))
    assert a.shape == b.shape == (64, 96, 3)
    assert not (a == b).all()
    assert (a[:, :, 0] == a[:, :, 2]).all()  # a grey map
    if values is not None:
        assert set(np.unique(a)) | set(np.unique(b)) <= values
    else:
        assert len(np.unique(a)) > 8


def test_depth_midas_runs_the_dpt_hybrid_file(library):
    a, b = (pixels(library.run("depth_midas", picture(seed, size=(64, 64)), resolution=64)) for seed in (1, 2))
    assert not (a == b).all()
    assert a.min() == 0 and a.max() == 255  # stretched to the full range
    assert "midas" in library.loaded


def test_a_second_run_reads_no_file_and_the_cache_keeps_the_latest(annotators, tmp_path):
    for name in (HED, PIDINET):
        shutil.copy(annotators / name, tmp_path / name)
    lib = PreprocessorLibrary(tmp_path, cache_size=1)
    first = pixels(lib.run("softedge_pidinet", picture(1), 64))
    (tmp_path / PIDINET).unlink()
    assert lib.missing_files("softedge_pidinet") == [tmp_path / PIDINET]
    again = pixels(lib.run("softedge_pidinet", picture(1), 64))  # the cached network: no file needed
    assert (again == first).all()  # and the same input gives the same map
    assert lib.loaded == ["pidinet"]
    lib.run("softedge_hed", picture(1), 64)
    assert lib.loaded == ["hed"]  # cache_size 1: PiDiNet made room
    with pytest.raises(AnnotatorMissingError, match=PIDINET):
        lib.run("softedge_pidinet", picture(1), 64)


# --- OpenPose: the hand-set networks find the dot person ---

def test_openpose_draws_the_person_where_the_dots_are(library):
    body = pixels(library.run("openpose", person(), resolution=64))
    assert body.shape == (128, 64, 3)
    assert body[44, 32].tolist() == [255, 85, 0]  # the neck point, in OpenPose's colour for the neck
    assert body[24, 32].tolist() == [255, 0, 0]  # the nose
    assert body[118, 26].any() and not body[:, 50:].any()  # the ankle is drawn; nothing where nobody is
    assert not (body == 255).all(axis=2).any()  # no face points without the face model
    # openpose_hand loads the hand network too; this person shows no arm, so no hand is drawn
    shifted = pixels(library.run("openpose_hand", person(dx=8), resolution=64))
    assert shifted[44, 40].tolist() == [255, 85, 0] and not shifted[44, 32].any()
    assert "openpose_hand" in library.loaded
    ys, xs = np.nonzero(body.any(axis=2))
    ys2, xs2 = np.nonzero(shifted.any(axis=2))
    # keypoints come from 8x-coarser heatmaps: the skeleton moves with the dots to within a pixel or two
    assert abs((xs2.mean() - xs.mean()) - 8) < 2 and abs(ys2.mean() - ys.mean()) < 1


def test_openpose_face_adds_the_face_points(library):
    face = pixels(library.run("openpose_face", person(), resolution=64))
    white = (face == 255).all(axis=2)
    assert white[24, 32]  # the face model's landmarks sit on the nose dot
    ys, xs = np.nonzero(white)
    assert abs(xs.mean() - 32) < 3 and abs(ys.mean() - 24) < 3
    assert face[44, 32].tolist() == [255, 85, 0]  # with the body drawn too


# --- missing and hostile files ---

@pytest.mark.parametrize("name, needs", [
    ("softedge_hed", HED), ("scribble_pidinet", PIDINET), ("depth_midas", MIDAS), ("openpose", BODY),
    ("depth_anything", "depth-anything"),
])
def test_missing_file_names_the_file_and_the_folder(tmp_path, name, needs):
    folder = tmp_path / "models" / "annotators"
    folder.mkdir(parents=True)
    lib = PreprocessorLibrary(folder)
    assert lib.missing_files(name)
    with pytest.raises(AnnotatorMissingError) as err:
        lib.run(name, picture(0), 64)
    assert needs in str(err.value) and str(folder) in str(err.value) and name in str(err.value)


def test_openpose_variants_need_only_their_files(annotators, tmp_path):
    shutil.copy(annotators / BODY, tmp_path / BODY)
    lib = PreprocessorLibrary(tmp_path)
    assert lib.missing_files("openpose") == []
    assert lib.missing_files("openpose_full") == [tmp_path / HAND, tmp_path / FACE]
    with pytest.raises(AnnotatorMissingError, match=HAND):  # named before any network loads
        lib.run("openpose_full", person(), 64)
    assert lib.loaded == []


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_hostile_pickle_is_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    ta.write_hostile(tmp_path / HED, marker, zip_format=zip_format)
    with pytest.raises(AnnotatorLoadError, match="refused") as err:
        PreprocessorLibrary(tmp_path).run("softedge_hed", picture(0), 64)
    assert HED in str(err.value)
    assert not marker.exists()
    if not zip_format:  # the file really is hostile: a plain unpickler runs its payload
        pickle.loads((tmp_path / HED).read_bytes())
        assert marker.exists()


def test_hostile_hand_file_is_refused_for_the_hand_variant(annotators, tmp_path):
    shutil.copy(annotators / BODY, tmp_path / BODY)
    marker = tmp_path / "pwned"
    ta.write_hostile(tmp_path / HAND, marker)
    with pytest.raises(AnnotatorLoadError, match=HAND):
        PreprocessorLibrary(tmp_path).run("openpose_hand", person(), 64)
    assert not marker.exists()


def test_hostile_transformers_weights_are_refused(annotators, tmp_path):
    folder = tmp_path / "depth-anything"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(annotators / "depth-anything" / name, folder / name)
    marker = tmp_path / "pwned"
    ta.write_hostile(folder / "pytorch_model.bin", marker)
    with pytest.raises(AnnotatorLoadError, match="refused"):
        PreprocessorLibrary(tmp_path).run("depth_anything", picture(0), 64)
    assert not marker.exists()


def test_damaged_or_foreign_files_are_clear_errors(annotators, tmp_path):
    data = (annotators / HED).read_bytes()
    (tmp_path / HED).write_bytes(data[: len(data) // 2])
    with pytest.raises(AnnotatorLoadError, match="truncated or damaged"):
        PreprocessorLibrary(tmp_path).run("softedge_hed", picture(0), 64)
    shutil.copy(annotators / PIDINET, tmp_path / HED)  # a PiDiNet file under HED's name
    with pytest.raises(AnnotatorLoadError, match="not the network"):
        PreprocessorLibrary(tmp_path).run("softedge_hed", picture(0), 64)


def test_weightless_preprocessors_import_no_detector_library():
    code = ("import sys; from PIL import Image; from backend.control.preprocessors import PreprocessorLibrary; "
            "PreprocessorLibrary('missing').run('canny', Image.new('RGB', (64, 64))); "
            "print(sorted(m for m in ('controlnet_aux', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
