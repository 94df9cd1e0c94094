"""Preprocessors that need no weights: none, invert, canny, scribble_xdog, lineart_standard, shuffle, tile.

Each follows sd-webui-controlnet's function of the same name on the image the
library has already resized to the working size.
"""
from __future__ import annotations

import cv2
import numpy as np

from backend.control.preprocessors.imaging import hwc3
from backend.control.preprocessors.spec import Entry, Job, PreprocessorSpec, Slider

SHUFFLE_SEED = 0  # fixed so the same picture gives the same map (the extension draws a new one each call)


def _none(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
    return image


def _invert(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
    return 255 - image  # black lines on white -> white lines on black, what line models expect


def _canny(job: Job, image: np.ndarray, low: float, high: float) -> np.ndarray:
    return hwc3(cv2.Canny(image, int(low), int(high)))


def _xdog(job: Job, image: np.ndarray, threshold: float, b: float) -> np.ndarray:
    x = image.astype(np.float32)
    g1 = cv2.GaussianBlur(x, (0, 0), 0.5)
    g2 = cv2.GaussianBlur(x, (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros(dog.shape, dtype=np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > threshold] = 255
    return hwc3(out)


def _lineart_standard(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
    x = image.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    # a blank picture has no strong pixels; the extension's median of nothing would warn and fall back to 16
    intensity /= max(16.0, float(np.median(strong))) if strong.size else 16.0
    return hwc3((intensity * 127).clip(0, 255).astype(np.uint8))


def _noise_disk(rng: np.random.Generator, h: int, w: int, f: int) -> np.ndarray:
    noise = rng.uniform(0, 1, size=((h // f) + 2, (w // f) + 2))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise -= np.min(noise)
    return noise / max(float(np.max(noise)), 1e-5)


def _shuffle(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
    h, w = image.shape[:2]
    rng = np.random.default_rng(SHUFFLE_SEED)
    x = _noise_disk(rng, h, w, 256) * float(w - 1)
    y = _noise_disk(rng, h, w, 256) * float(h - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _tile_resample(job: Job, image: np.ndarray, rate: float, b: float) -> np.ndarray:
    if rate < 1.1:  # the extension's cut-off: small rates leave the picture as it is
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)


ENTRIES = (
    Entry(PreprocessorSpec("none", resolution=None), _none),
    Entry(PreprocessorSpec("invert", aliases=("invert (from white bg & black line)", "scribble"),
                           resolution=None, category="lineart"), _invert),
    Entry(PreprocessorSpec("canny", threshold_a=Slider("Canny Low Threshold", 1, 255, 100),
                           threshold_b=Slider("Canny High Threshold", 1, 255, 200), binary=True,
                           category="canny"), _canny),
    Entry(PreprocessorSpec("scribble_xdog", threshold_a=Slider("XDoG Threshold", 1, 64, 32), binary=True,
                           category="scribble"), _xdog),
    Entry(PreprocessorSpec("lineart_standard", aliases=("lineart_standard (from white bg & black line)",),
                           category="lineart"), _lineart_standard),
    Entry(PreprocessorSpec("shuffle", category="shuffle"), _shuffle),
    Entry(PreprocessorSpec("tile_resample", resolution=None,
                           threshold_a=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), category="tile"),
          _tile_resample),
)
