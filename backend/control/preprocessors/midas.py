"""depth_midas: MiDaS v3 DPT-Hybrid (controlnet-aux's DPTDepthModel) from dpt_hybrid-midas-501f0c75.pt.

Built with pretrained=False throughout (controlnet-aux passes False to timm's
vit_base_resnet50_384), so nothing is fetched; the weights come only from the
annotator folder. Pre/post-processing as controlnet-aux's MidasDetector: RGB
scaled to [-1, 1], relative inverse depth stretched to 0..255 (near is bright).
"""
from __future__ import annotations

import numpy as np
import torch

from backend.control.preprocessors.imaging import hwc3, normalise, pad_to_multiple, to_uint8
from backend.control.preprocessors.spec import Entry, Job, PreprocessorSpec
from backend.control.preprocessors.weights import aux, load_network

MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"


def _network(job: Job) -> torch.nn.Module:
    def build():
        path = job.file(MIDAS_FILE)  # a missing file is reported before the slow import
        dpt = aux("midas.midas.dpt_depth")
        return load_network(lambda: dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True),
                            path, job.spec.name, job.device)
    return job.network("midas", build)


def midas_depth(job: Job, image: np.ndarray) -> np.ndarray:
    net = _network(job)
    padded, crop = pad_to_multiple(image, 64)  # 16-pixel patches on a stride-16 ResNet stem
    with torch.inference_mode():
        x = torch.from_numpy(padded).float().to(job.device).permute(2, 0, 1)[None] / 127.5 - 1.0
        depth = net(x)[0].float().cpu().numpy()
    return crop(depth)


def _depth_midas(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
    return hwc3(to_uint8(normalise(midas_depth(job, image))))


ENTRIES = (
    Entry(PreprocessorSpec("depth_midas", aliases=("depth",), weight_files=(MIDAS_FILE,), category="depth"),
          _depth_midas),
)
