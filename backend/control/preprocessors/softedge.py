"""Soft edges (HED, PiDiNet), their "safe" quantised forms and the scribbles drawn from them.

Pre- and post-processing as controlnet-aux 0.0.10's HEDdetector / PidiNetDetector
(and sd-webui-controlnet): HED takes RGB 0..255 and averages the sigmoid of its
five side outputs; PiDiNet takes BGR 0..1 and its last output is the edge map.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from backend.control.preprocessors.imaging import hwc3, pad_to_multiple, safe_step, scribble, to_uint8
from backend.control.preprocessors.spec import Entry, Job, PreprocessorSpec
from backend.control.preprocessors.weights import aux, load_network

HED_FILE = "ControlNetHED.pth"
PIDINET_FILE = "table5_pidinet.pth"


def _hed_network(job: Job) -> torch.nn.Module:
    def build():
        path = job.file(HED_FILE)  # a missing file is reported before the slow import
        return load_network(aux("hed").ControlNetHED_Apache2, path, job.spec.name, job.device)
    return job.network("hed", build)


def _pidinet_network(job: Job) -> torch.nn.Module:
    def build():
        path = job.file(PIDINET_FILE)
        return load_network(aux("pidi.model").pidinet, path, job.spec.name, job.device)
    return job.network("pidinet", build)


def hed_edge(job: Job, image: np.ndarray) -> np.ndarray:
    """Edge probability in [0, 1], HxW."""
    net = _hed_network(job)
    padded, crop = pad_to_multiple(image, 64)  # four 2x poolings: whole cells keep the side outputs aligned
    h, w = padded.shape[:2]
    with torch.inference_mode():
        x = torch.from_numpy(padded).float().to(job.device).permute(2, 0, 1)[None]
        sides = [p[0, 0].float().cpu().numpy() for p in net(x)]
    sides = [cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR) for s in sides]
    edge = 1.0 / (1.0 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
    return crop(edge)


def pidinet_edge(job: Job, image: np.ndarray) -> np.ndarray:
    net = _pidinet_network(job)
    padded, crop = pad_to_multiple(image, 64)
    bgr = np.ascontiguousarray(padded[:, :, ::-1])  # PiDiNet was trained on BGR
    with torch.inference_mode():
        x = torch.from_numpy(bgr).float().to(job.device).permute(2, 0, 1)[None] / 255.0
        edge = net(x)[-1][0, 0].float().cpu().numpy()
    return crop(edge)


def _softedge_hed(job, image, a, b):
    return hwc3(to_uint8(hed_edge(job, image)))


def _softedge_hedsafe(job, image, a, b):
    return hwc3(to_uint8(safe_step(hed_edge(job, image))))


def _scribble_hed(job, image, a, b):
    return hwc3(scribble(to_uint8(hed_edge(job, image))))


def _softedge_pidinet(job, image, a, b):
    return hwc3(to_uint8(pidinet_edge(job, image)))


def _softedge_pidisafe(job, image, a, b):
    return hwc3(to_uint8(safe_step(pidinet_edge(job, image))))


def _scribble_pidinet(job, image, a, b):
    return hwc3(scribble(to_uint8(pidinet_edge(job, image))))


ENTRIES = (
    Entry(PreprocessorSpec("softedge_hed", aliases=("hed",), weight_files=(HED_FILE,), category="softedge"),
          _softedge_hed),
    Entry(PreprocessorSpec("softedge_hedsafe", aliases=("hed_safe",), weight_files=(HED_FILE,),
                           category="softedge"), _softedge_hedsafe),
    Entry(PreprocessorSpec("softedge_pidinet", aliases=("pidinet",), weight_files=(PIDINET_FILE,),
                           category="softedge"), _softedge_pidinet),
    Entry(PreprocessorSpec("softedge_pidisafe", aliases=("pidinet_safe",), weight_files=(PIDINET_FILE,),
                           category="softedge"), _softedge_pidisafe),
    Entry(PreprocessorSpec("scribble_hed", aliases=("fake_scribble",), weight_files=(HED_FILE,), binary=True,
                           category="scribble"), _scribble_hed),
    Entry(PreprocessorSpec("scribble_pidinet", aliases=("pidinet_scribble",), weight_files=(PIDINET_FILE,),
                           binary=True, category="scribble"), _scribble_pidinet),
)
