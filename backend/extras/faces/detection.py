"""Finding faces and their five landmarks with RetinaFace, as facexlib's face helper does for A1111.

The picture is scaled up so its short side is at least 640 pixels (facexlib's
`resize=640`, "always scale up"), fed as BGR minus the ImageNet-Caffe mean, and
every anchor's box and landmarks are decoded from its prior. Anchors above the
confidence threshold go through non-maximum suppression; faces whose eyes are
closer than 5 pixels (side views, specks) are dropped, as A1111 asks facexlib to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from backend.extras.faces.retinaface import MIN_SIZES, STEPS, VARIANCES, RetinaFace

BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
DETECTION_SHORT_SIDE = 640  # facexlib resize=640: small pictures are scaled up to this
MAX_DETECTION_SIDE = 2048  # ours: larger pictures are detected scaled down (facexlib would run at full size)
CONFIDENCE = 0.97  # facexlib's face helper threshold
NMS_IOU = 0.4
MIN_EYE_DISTANCE = 5.0


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in picture pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y: eye on the picture's left, other eye, nose, mouth left, mouth right


def prior_boxes(height: int, width: int) -> np.ndarray:
    """(N, 4) anchors as (cx, cy, w, h), fractions of the picture: per level, row-major cells, then anchor sizes."""
    levels = []
    for sizes, step in zip(MIN_SIZES, STEPS):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width,
                             indexing="ij")
        per_size = [np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], axis=-1)
                    for s in sizes]
        levels.append(np.stack(per_size, axis=2).reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)


def decode_boxes(offsets: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Offsets (N, 4) against priors -> (x1, y1, x2, y2), fractions of the picture."""
    centers = priors[:, :2] + offsets[:, :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(offsets[:, 2:] * VARIANCES[1])
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)


def decode_landmarks(offsets: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Offsets (N, 10) against priors -> (N, 5, 2) points, fractions of the picture."""
    points = offsets.reshape(-1, 5, 2)
    return priors[:, None, :2] + points * VARIANCES[0] * priors[:, None, 2:]


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept, best first; boxes in pixels, areas counted inclusively (+1) as facexlib does."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou]
    return keep


def detection_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) the network sees: short side scaled up to 640, long side capped at 2048."""
    scale = max(1.0, DETECTION_SHORT_SIDE / min(height, width))
    if max(height, width) * scale > MAX_DETECTION_SIDE:
        scale = MAX_DETECTION_SIDE / max(height, width)
    return max(1, int(height * scale)), max(1, int(width * scale))


class FaceDetector:
    """RetinaFace and its decoding; `detect` takes an RGB uint8 array and returns faces best first."""

    def __init__(self, network: RetinaFace, device: torch.device | str, confidence: float = CONFIDENCE,
                 nms_iou: float = NMS_IOU, min_eye_distance: float = MIN_EYE_DISTANCE):
        self.network = network
        self.device = torch.device(device)
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.min_eye_distance = min_eye_distance

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        det_h, det_w = detection_size(height, width)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if (det_h, det_w) != (height, width):
            grow = det_h * det_w > height * width
            bgr = cv2.resize(bgr, (det_w, det_h), interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA)
        batch = torch.from_numpy(bgr.astype(np.float32) - BGR_MEAN).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            offsets, logits, landmark_offsets = self.network(batch)
            scores = torch.softmax(logits[0].float(), dim=-1)[:, 1].cpu().numpy()
        chosen = np.flatnonzero(scores > self.confidence)
        if chosen.size == 0:
            return []
        priors = prior_boxes(det_h, det_w)[chosen]
        boxes = decode_boxes(offsets[0].float().cpu().numpy()[chosen], priors)
        points = decode_landmarks(landmark_offsets[0].float().cpu().numpy()[chosen], priors)
        # back to the picture's pixels (per axis: the resize rounds each side separately)
        boxes = boxes * np.array([width, height, width, height], dtype=np.float32)
        points = points * np.array([width, height], dtype=np.float32)
        faces = []
        for i in non_maximum_suppression(boxes, scores[chosen], self.nms_iou):
            if np.linalg.norm(points[i, 0] - points[i, 1]) < self.min_eye_distance:
                continue
            faces.append(DetectedFace(tuple(float(v) for v in boxes[i]), float(scores[chosen][i]), points[i].copy()))
        return faces
