"""Small numpy/OpenCV helpers shared by the preprocessor families.

Written here rather than imported from controlnet-aux so that the weightless
preprocessors never pay for importing that package (it imports every detector).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from PIL import Image


def rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB; transparent pixels become white, as sd-webui-controlnet's HWC3 does for drawings."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def hwc3(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    return x[:, :, :3]


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) with the shorter side `resolution` and the aspect kept, as sd-webui-controlnet's resize."""
    k = float(resolution) / min(width, height)
    return max(1, int(round(width * k))), max(1, int(round(height * k)))


def resize(x: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    w, h = size
    if (x.shape[1], x.shape[0]) == (w, h):
        return x
    if nearest:
        method = cv2.INTER_NEAREST
    else:  # area when shrinking avoids aliasing; Lanczos when growing, as the extension does
        method = cv2.INTER_AREA if w * h < x.shape[0] * x.shape[1] else cv2.INTER_LANCZOS4
    return cv2.resize(x, (w, h), interpolation=method)


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Edge-pad right/bottom so networks with strides see whole cells; the function crops a result back."""
    h, w = x.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        pad = ((0, ph), (0, pw)) + ((0, 0),) * (x.ndim - 2)
        x = np.pad(x, pad, mode="edge")
    return x, lambda y: y[:h, :w].copy()


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Thin soft edges to one-pixel ridges (the scribble step of ControlNet's annotators)."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]
    y = np.zeros_like(x)
    for kernel in kernels:
        np.putmask(y, cv2.dilate(x, kernel=kernel) == x, x)
    out = np.zeros_like(y, dtype=np.uint8)
    out[y > threshold] = 255
    return out


def scribble(edge: np.ndarray) -> np.ndarray:
    """Soft edge (uint8) -> binary scribble lines, as controlnet-aux's scribble=True."""
    lines = nms(edge, 127, 3.0)
    lines = cv2.GaussianBlur(lines, (0, 0), 3.0)
    return np.where(lines > 4, 255, 0).astype(np.uint8)


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise a soft edge to a few levels (the "safe" variants: fewer hidden patterns for the model)."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8."""
    return (x * 255.0).clip(0, 255).astype(np.uint8)


def normalise(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a flat map becomes black rather than NaN."""
    x = x.astype(np.float64) - float(np.min(x))
    top = float(np.max(x))
    return x / top if top > 0 else np.zeros_like(x)
