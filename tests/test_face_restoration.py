"""Face restoration (GFPGAN, CodeFormer) with our own RetinaFace and ParseNet in facexlib's file layout.

The detector file is crafted (see tests/fixtures/tiny_faces.py) so that a near-white square is "a face";
GFPGAN and CodeFormer are the full-size spandrel architectures with random weights, saved as the released
files are. Everything is read back through the studio's safe loader.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import tiny_faces as tf

FACE = (208, 176, 272, 240)  # the default face_picture square (x1, y1, x2, y2)
FACE_CENTRE = np.array([240.0, 208.0])
CPU = torch.device("cpu")

# Keys and shapes of the released files, read off facexlib's module structure (retinaface.py,
# retinaface_net.py: IntermediateLayerGetter(resnet50) / MobileNetV1, FPN, SSH, 2 anchors per cell;
# parsing/parsenet.py: ParseNet(in_size=512, out_size=512, parsing_ch=19)).
RESNET50_KEYS = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.bn1.running_var": (64,),
    "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "body.layer2.0.conv2.weight": (128, 128, 3, 3),
    "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "fpn.merge2.0.weight": (256, 256, 3, 3),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh1.conv5X5_1.0.weight": (64, 256, 3, 3),
    "ssh3.conv7x7_3.1.running_mean": (64,),
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
    "BboxHead.1.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 256, 1, 1),
    "LandmarkHead.2.conv1x1.bias": (20,),
}
MOBILENET_KEYS = {
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.1.0.weight": (8, 1, 3, 3),  # depthwise
    "body.stage1.1.3.weight": (16, 8, 1, 1),  # pointwise
    "body.stage3.1.3.weight": (256, 256, 1, 1),
    "fpn.output1.0.weight": (64, 64, 1, 1),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 64, 1, 1),
}
PARSENET_KEYS = {
    "encoder.0.conv2d.weight": (64, 3, 3, 3),
    "encoder.1.shortcut_func.conv2d.weight": (128, 64, 3, 3),
    "encoder.1.conv1.norm.norm.weight": (128,),
    "encoder.4.conv2.conv2d.weight": (256, 256, 3, 3),
    "body.9.conv2.norm.norm.running_var": (256,),
    "decoder.3.shortcut_func.conv2d.weight": (64, 128, 3, 3),
    "out_mask_conv.conv2d.weight": (19, 64, 3, 3),
    "out_img_conv.conv2d.bias": (3,),
}


def _state_dict(factory) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return factory().state_dict()


def _library(gfpgan=(), codeformer=(), facexlib=()):
    from backend.extras.faces import FaceRestorerLibrary

    return FaceRestorerLibrary(list(gfpgan), list(codeformer), list(facexlib), CPU, torch.float32)


@pytest.fixture(scope="session")
def parsing_library(face_models):
    """GFPGAN with ParseNet's mask (only GFPGAN ever runs here, so only it loads)."""
    return _library([face_models / "GFPGAN"], [face_models / "Codeformer"], [face_models / "facexlib"])


@pytest.fixture(scope="session")
def square_library(face_models):
    """CodeFormer with the square mask (no parsing file in reach)."""
    return _library([face_models / "GFPGAN"], [face_models / "Codeformer"], [face_models / "facexlib-noparse"])


@pytest.fixture(scope="session")
def detector(face_models):
    from backend.extras.faces.detection import FaceDetector
    from backend.extras.faces.retinaface import RESNET50, RetinaFace
    from backend.extras.faces.weights import load_network

    network = load_network(lambda: RetinaFace(RESNET50), face_models / "facexlib" / "detection_Resnet50_Final.pth",
                           "face detection", CPU)
    return FaceDetector(network, CPU)


def _outside(array: np.ndarray, margin: int = 96) -> np.ndarray:
    """Pixels farther than `margin` from the face square."""
    keep = np.ones(array.shape[:2], bool)
    x1, y1, x2, y2 = FACE
    keep[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin] = False
    return array[keep]


# ----- layouts


@pytest.mark.parametrize("which, expected, count", [
    ("resnet50", RESNET50_KEYS, 383), ("mobilenet", MOBILENET_KEYS, 253), ("parsenet", PARSENET_KEYS, 202)])
def test_networks_have_facexlibs_keys_and_shapes(which, expected, count):
    from backend.extras.faces.parsenet import ParseNet
    from backend.extras.faces.retinaface import MOBILENET, RESNET50, RetinaFace

    factory = {"resnet50": lambda: RetinaFace(RESNET50), "mobilenet": lambda: RetinaFace(MOBILENET),
               "parsenet": ParseNet}[which]
    sd = _state_dict(factory)
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not [k for k in sd if ".fc." in k or k.startswith("body.avg")]  # no classifier: the files have none
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == count


def test_detector_file_reads_back_through_the_safe_loader(face_models, tmp_path):
    from backend.extras.faces import FaceRestoreError
    from backend.extras.faces.retinaface import RESNET50, RetinaFace
    from backend.extras.faces.weights import load_network, read_tensors

    path = face_models / "facexlib" / "detection_Resnet50_Final.pth"
    raw = read_tensors(path, "face detection")
    assert "body.conv1.weight" in raw and not any(k.startswith("module.") for k in raw)  # DataParallel prefix off
    crafted = tf.crafted_retinaface_state_dict()
    net = load_network(lambda: RetinaFace(RESNET50), path, "face detection", CPU)
    for key, value in net.state_dict().items():
        assert torch.equal(value, crafted[key]), key

    # a file from an older torch, without BatchNorm's step counters, loads too
    old = tmp_path / "detection_Resnet50_Final.pth"
    torch.save({k: v for k, v in crafted.items() if not k.endswith("num_batches_tracked")}, old)
    load_network(lambda: RetinaFace(RESNET50), old, "face detection", CPU)

    # another network's file is refused by name, never half-loaded
    with pytest.raises(FaceRestoreError, match="missing body.conv1.weight"):
        load_network(lambda: RetinaFace(RESNET50), face_models / "facexlib" / "parsing_parsenet.pth",
                     "face detection", CPU)


def test_mobilenet_detector_file_loads_and_runs(tmp_path):
    from backend.extras.faces.detection import FaceDetector
    from backend.extras.faces.retinaface import MOBILENET, RetinaFace
    from backend.extras.faces.weights import load_network

    torch.manual_seed(0)
    path = tmp_path / "detection_mobilenet0.25_Final.pth"
    torch.save({"module." + k: v for k, v in RetinaFace(MOBILENET).state_dict().items()}, path)
    network = load_network(lambda: RetinaFace(MOBILENET), path, "face detection", CPU)
    faces = FaceDetector(network, CPU).detect(np.asarray(tf.face_picture()))
    assert isinstance(faces, list)


# ----- detection and alignment


def test_detection_finds_the_bright_square_and_nothing_in_flat_pictures(detector):
    faces = detector.detect(np.asarray(tf.face_picture()))
    assert len(faces) == 1
    face = faces[0]
    centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
    assert np.linalg.norm(centre - FACE_CENTRE) < 16
    assert face.score > 0.97
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    assert face.landmarks[0, 0] < face.landmarks[1, 0] and face.landmarks[2, 1] < face.landmarks[3, 1]
    for value in (0, 70, 128, 255):  # dark, grey, white: no face anywhere
        assert detector.detect(np.asarray(tf.flat_picture(value=value))) == []


def test_alignment_maps_landmarks_onto_the_template_and_back(detector):
    from backend.extras.faces.alignment import FFHQ_TEMPLATE, alignment_matrix, apply_matrix, warp_face

    landmarks = detector.detect(np.asarray(tf.face_picture()))[0].landmarks
    matrix = alignment_matrix(landmarks)
    assert np.abs(apply_matrix(matrix, landmarks) - FFHQ_TEMPLATE).max() < 1.0
    import cv2

    back = apply_matrix(cv2.invertAffineTransform(matrix), FFHQ_TEMPLATE)
    assert np.abs(back - landmarks).max() < 0.5

    # a rotated, scaled, shifted face: the similarity is recovered exactly
    angle, scale, shift = np.deg2rad(20), 0.3, np.array([100.0, 50.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tilted = FFHQ_TEMPLATE @ rotation.T + shift
    assert np.abs(apply_matrix(alignment_matrix(tilted), tilted) - FFHQ_TEMPLATE).max() < 0.05

    crop = warp_face(np.asarray(tf.face_picture()), matrix)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    assert crop[200:330, 200:320].mean() > 200  # the bright face fills the template's face area


# ----- end to end


def test_gfpgan_restores_the_face_and_leaves_the_rest_alone(parsing_library):
    picture = tf.face_picture().convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:40, :40] = 0  # a transparent corner must stay transparent
    picture.putalpha(Image.fromarray(alpha))

    result = parsing_library.restore(picture, "GFPGAN")

    assert (result.faces, result.message) == (1, "restored 1 face with GFPGAN")
    assert result.image.mode == "RGBA" and result.image.size == picture.size
    before, after = np.asarray(picture).astype(int), np.asarray(result.image).astype(int)
    np.testing.assert_array_equal(after[:, :, 3], alpha)
    x1, y1, x2, y2 = FACE
    assert np.abs(after[y1:y2, x1:x2, :3] - before[y1:y2, x1:x2, :3]).mean() > 20
    np.testing.assert_array_equal(_outside(after), _outside(before))


def test_codeformer_weight_changes_the_result(square_library):
    picture = tf.face_picture()
    strong = square_library.restore(picture, "codeformer", codeformer_weight=0.0)
    faithful = square_library.restore(picture, "CodeFormer", codeformer_weight=1.0)

    assert strong.faces == faithful.faces == 1
    assert faithful.message == "restored 1 face with CodeFormer (weight 1)"
    a, b, original = (np.asarray(im).astype(int) for im in (strong.image, faithful.image, picture))
    x1, y1, x2, y2 = FACE
    assert np.abs(a[y1:y2, x1:x2] - b[y1:y2, x1:x2]).mean() > 1
    assert np.abs(a[y1:y2, x1:x2] - original[y1:y2, x1:x2]).mean() > 20
    for out in (a, b):
        np.testing.assert_array_equal(_outside(out), _outside(original))


def test_a_picture_without_faces_comes_back_unchanged(square_library):
    picture = tf.face_picture(face=(0, 0, 0, 0))  # the background alone
    result = square_library.restore(picture, "CodeFormer")
    assert (result.faces, result.message) == (0, "no face found")
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(picture))

    stopped = square_library.restore(tf.face_picture(), "CodeFormer", should_stop=lambda: True)
    assert stopped.faces == 0 and "stopped" in stopped.message
    np.testing.assert_array_equal(np.asarray(stopped.image), np.asarray(tf.face_picture()))


# ----- files, errors, listing


def test_missing_files_are_named_with_their_folder(face_models, tmp_path):
    from backend.extras.faces import FaceRestoreError

    gfpgan, facexlib = tmp_path / "GFPGAN", tmp_path / "facexlib"
    gfpgan.mkdir(), facexlib.mkdir()
    library = _library([gfpgan], [tmp_path / "Codeformer"], [facexlib])
    with pytest.raises(FaceRestoreError) as missing_model:
        library.restore(tf.face_picture(), "GFPGAN")
    assert "GFPGANv1.4.pth" in str(missing_model.value) and str(gfpgan) in str(missing_model.value)

    os.symlink(face_models / "GFPGAN" / "GFPGANv1.4.pth", gfpgan / "GFPGANv1.4.pth")
    with pytest.raises(FaceRestoreError) as missing_detector:
        library.restore(tf.face_picture(), "GFPGAN")
    message = str(missing_detector.value)
    assert "detection_Resnet50_Final.pth" in message and str(facexlib) in message and str(gfpgan) in message

    with pytest.raises(FaceRestoreError, match="unknown face restorer 'RestoreFormer'"):
        library.restore(tf.face_picture(), "RestoreFormer")
    with pytest.raises(FaceRestoreError, match="between 0 and 1"):
        library.restore(tf.face_picture(), "CodeFormer", codeformer_weight=1.5)


def test_hostile_pickles_are_refused_and_never_run(face_models, tmp_path):
    from backend.extras.faces import FaceRestoreError

    marker = tmp_path / "marker"
    facexlib = tmp_path / "facexlib"
    tf.write_hostile_pickle(facexlib / "detection_Resnet50_Final.pth", marker)
    library = _library([face_models / "GFPGAN"], [], [facexlib])
    with pytest.raises(FaceRestoreError, match="refused to load") as refused:
        library.restore(tf.face_picture(), "GFPGAN")
    assert "detection_Resnet50_Final.pth" in str(refused.value)

    gfpgan = tmp_path / "GFPGAN"
    tf.write_hostile_pickle(gfpgan / "GFPGANv1.4.pth", marker)
    library = _library([gfpgan], [], [face_models / "facexlib-noparse"])
    with pytest.raises(FaceRestoreError, match="refused to load"):
        library.restore(tf.face_picture(), "GFPGAN")
    assert not marker.exists()


def test_entries_and_available_follow_the_folders(face_models, tmp_path):
    from backend.extras.faces import FACE_RESTORERS

    library = _library([face_models / "GFPGAN"], [face_models / "Codeformer"], [face_models / "facexlib"])
    assert FACE_RESTORERS == ("CodeFormer", "GFPGAN")
    assert library.entries() == [{"name": "CodeFormer", "cmd_dir": str(face_models / "Codeformer")},
                                 {"name": "GFPGAN", "cmd_dir": str(face_models / "GFPGAN")}]
    assert library.available() == ["CodeFormer", "GFPGAN"]

    empty = _library([tmp_path / "GFPGAN"], [], [])
    assert empty.entries() == [{"name": "CodeFormer", "cmd_dir": None},
                               {"name": "GFPGAN", "cmd_dir": str(tmp_path / "GFPGAN")}]
    assert empty.available() == []
    empty.refresh()  # nothing loaded: a no-op
