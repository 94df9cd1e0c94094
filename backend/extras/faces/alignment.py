"""Cutting a face out to the 512x512 FFHQ layout GFPGAN and CodeFormer were trained on, and putting it back.

A similarity transform (rotation, uniform scale, shift) maps the five detected
landmarks onto FFHQ's template; the face is warped into a 512x512 crop with
facexlib's grey border. After restoration the crop goes back through the
inverse transform and is blended in through a soft mask: the face-parsing mask
when there is one, otherwise the crop's own square, eroded and blurred by an
amount that grows with the face, as facexlib's `paste_faces_to_input_image`.
Outside the mask the picture keeps its exact pixel values.
"""
from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 512
# FFHQ's five landmarks in a 512x512 crop: eyes (picture-left first), nose tip, mouth corners.
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
BORDER_RGB = (132.0, 133.0, 135.0)  # facexlib's borderValue (135, 133, 132), which is BGR


def alignment_matrix(landmarks: np.ndarray, template: np.ndarray = FFHQ_TEMPLATE) -> np.ndarray:
    """The 2x3 similarity taking the picture's landmarks (5, 2) onto the template (LMEDS, as facexlib)."""
    source = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    matrix, _ = cv2.estimateAffinePartial2D(source, template, method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)):
        matrix = least_squares_similarity(source, template)
    return matrix.astype(np.float64)


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Closed-form similarity (Umeyama without reflection), for the rare case LMEDS gives none."""
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    variance = float((src ** 2).sum())
    if variance == 0.0:
        raise ValueError("all landmarks are at one point")
    a = float((src * dst).sum()) / variance
    b = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / variance
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (dst_mean - rotation @ src_mean)[:, None]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_face(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The aligned FACE_SIZE x FACE_SIZE crop (same dtype as `rgb`), grey where the picture ends."""
    return cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB)


def square_mask(inverse: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """facexlib's mask without parsing: (hard mask that trims the warp's black edge, feathered mask)."""
    warped = cv2.warpAffine(np.ones((FACE_SIZE, FACE_SIZE), np.float32), inverse, (width, height))
    hard = cv2.erode(warped, np.ones((2, 2), np.uint8))
    edge = int(float(hard.sum()) ** 0.5) // 20  # the feather grows with the face
    if edge > 0:
        centre = cv2.erode(hard, np.ones((2 * edge, 2 * edge), np.uint8))
        soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0)
    else:
        soft = hard
    return hard, soft


def paste_face(canvas: np.ndarray, restored: np.ndarray, matrix: np.ndarray,
               face_mask: np.ndarray | None = None) -> None:
    """Blend `restored` (the aligned crop, float RGB 0..255) into `canvas` (float32 H x W x 3) in place.

    `face_mask` (FACE_SIZE x FACE_SIZE, 0..1) is the parsing mask in crop coordinates; without it the
    crop's square is used.
    """
    height, width = canvas.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(restored.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    if face_mask is not None:
        soft = cv2.warpAffine(face_mask.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR)
    else:
        hard, soft = square_mask(inverse, height, width)
        back *= hard[:, :, None]
    soft = np.clip(soft, 0.0, 1.0)[:, :, None]
    inside = soft[:, :, 0] > 0  # exact: where the mask is zero the canvas is not touched at all
    canvas[inside] = soft[inside] * back[inside] + (1.0 - soft[inside]) * canvas[inside]
