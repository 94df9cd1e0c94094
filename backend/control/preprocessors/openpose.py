"""OpenPose: body, hands and face keypoints drawn as ControlNet's skeleton maps.

Detection is controlnet-aux 0.0.10's own (its Body/Hand/Face estimators and
OpenposeDetector.detect_poses), with networks we build and fill: their
constructors would torch.load the path themselves. lllyasviel's
body_pose_model.pth / hand_pose_model.pth name layers without the block prefix
("conv1_1.weight" for "model0.conv1_1.weight"), as controlnet-aux's `transfer`
expects; facenet.pth is a plain FaceNet state dict.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch

from backend.control.preprocessors.spec import Entry, Job, PreprocessorSpec
from backend.control.preprocessors.weights import aux, load_network

BODY_FILE = "body_pose_model.pth"
HAND_FILE = "hand_pose_model.pth"
FACE_FILE = "facenet.pth"
_EPS = 0.01  # controlnet-aux draws no point at the canvas edge (its "not found" marker)
_HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11],
               [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]


def caffe_names(state_dict: dict[str, torch.Tensor], expected: list[str]) -> dict[str, torch.Tensor]:
    """Map "conv1_1.weight" to "model0.conv1_1.weight"; keys the file has but no layer takes stay, to be reported."""
    if all(k in state_dict for k in expected):  # already in the network's own names
        return state_dict
    out, used = {}, set()
    for key in expected:
        short = key.split(".", 1)[1]
        if short in state_dict:
            out[key] = state_dict[short]
            used.add(short)
    out.update({k: v for k, v in state_dict.items() if k not in used and k not in out})
    return out


def _estimator(cls, model: torch.nn.Module):
    est = cls.__new__(cls)  # skip __init__: it would read the file with a plain torch.load
    est.model = model
    return est


def _caffe_estimator(job: Job, key: str, filename: str, network: str, estimator: str):
    """The body or hand estimator: lllyasviel's caffe-named weights in controlnet-aux's network."""
    def build():
        path = job.file(filename)
        op = aux("open_pose")
        model = load_network(getattr(op.model, network), path, job.spec.name, job.device, remap=caffe_names)
        return _estimator(getattr(op, estimator), model)
    return job.network(key, build)


def _body(job: Job):
    return _caffe_estimator(job, "openpose_body", BODY_FILE, "bodypose_model", "Body")


def _hand(job: Job):
    return _caffe_estimator(job, "openpose_hand", HAND_FILE, "handpose_model", "Hand")


def _face(job: Job):
    def build():
        path = job.file(FACE_FILE)
        op = aux("open_pose")
        face = _estimator(op.Face, load_network(op.face.FaceNet, path, job.spec.name, job.device))
        face.inference_size = op.face.params["inference_img_size"]
        face.sigma = op.face.params["gaussian_sigma"]
        face.threshold = op.face.params["heatmap_peak_thresh"]
        return face
    return job.network("openpose_face", build)


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    """controlnet-aux's draw_handpose, without the matplotlib import it makes only for colours."""
    if not keypoints:
        return canvas
    h, w = canvas.shape[:2]
    for i, (e1, e2) in enumerate(_HAND_EDGES):
        k1, k2 = keypoints[e1], keypoints[e2]
        if k1 is None or k2 is None:
            continue
        x1, y1, x2, y2 = int(k1.x * w), int(k1.y * h), int(k2.x * w), int(k2.y * h)
        if min(x1, y1, x2, y2) > _EPS:
            colour = [c * 255 for c in colorsys.hsv_to_rgb(i / float(len(_HAND_EDGES)), 1.0, 1.0)]
            cv2.line(canvas, (x1, y1), (x2, y2), colour, thickness=2)
    for k in keypoints:
        x, y = int(k.x * w), int(k.y * h)
        if x > _EPS and y > _EPS:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    return canvas


def detect(job: Job, image: np.ndarray, hands: bool, face: bool):
    """controlnet-aux PoseResults (coordinates 0..1) for every person in the RGB image."""
    needed = [("openpose_body", BODY_FILE)]
    needed += [("openpose_hand", HAND_FILE)] * hands + [("openpose_face", FACE_FILE)] * face
    for key, name in needed:  # name every absent file before spending time loading the others
        if not job.has(key):
            job.file(name)
    networks = _body(job), _hand(job) if hands else None, _face(job) if face else None
    detector = aux("open_pose").OpenposeDetector(*networks)
    with torch.inference_mode():
        return detector.detect_poses(image, include_hand=hands, include_face=face)


def _runner(body: bool, hands: bool, face: bool):
    def run(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
        util = aux("open_pose.util")
        h, w = image.shape[:2]
        canvas = np.zeros((h, w, 3), dtype=np.uint8)
        for pose in detect(job, image, hands, face):
            if body:
                canvas = util.draw_bodypose(canvas, pose.body.keypoints)
            if hands:
                canvas = draw_hand(draw_hand(canvas, pose.left_hand), pose.right_hand)
            if face:
                canvas = util.draw_facepose(canvas, pose.face)
        return canvas
    return run


def _spec(name: str, files: tuple[str, ...]) -> PreprocessorSpec:
    return PreprocessorSpec(name, weight_files=files, category="openpose")


ENTRIES = (
    Entry(_spec("openpose", (BODY_FILE,)), _runner(body=True, hands=False, face=False)),
    Entry(_spec("openpose_hand", (BODY_FILE, HAND_FILE)), _runner(body=True, hands=True, face=False)),
    Entry(_spec("openpose_face", (BODY_FILE, FACE_FILE)), _runner(body=True, hands=False, face=True)),
    Entry(_spec("openpose_faceonly", (BODY_FILE, FACE_FILE)), _runner(body=False, hands=False, face=True)),
    Entry(_spec("openpose_full", (BODY_FILE, HAND_FILE, FACE_FILE)), _runner(body=True, hands=True, face=True)),
)
