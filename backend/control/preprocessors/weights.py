"""Loading an annotator network from a stranger's file without running anything from it.

The file is read only through the studio's safe loader (format by content,
pickles with weights_only=True); the network is built by us, empty, and the
tensors go in with strict key and shape checks. controlnet-aux never sees
the path, so none of its own torch.load calls run.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from backend.control.preprocessors.spec import AnnotatorLoadError
from backend.models.errors import CheckpointLoadError
from backend.models.fill import Remap, fill_network
from backend.models.safe_load import read_state_dict


def aux(module: str) -> ModuleType:
    """A controlnet-aux submodule, imported on first use.

    Importing any submodule runs the package's __init__, which imports every
    detector (seconds) and warns about mediapipe and timm names; those warnings
    say nothing to a user of this studio.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{module}")


def read_weights(path: Path, needed_by: str) -> dict[str, torch.Tensor]:
    try:
        state_dict, _ = read_state_dict(path)
    except CheckpointLoadError as exc:
        raise AnnotatorLoadError(f"{needed_by} cannot use {path}: {exc}") from None
    return strip_prefix(state_dict, "module.")  # DataParallel training leaves this on real files (PiDiNet)


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_network(factory: Callable[[], torch.nn.Module], path: Path, needed_by: str, device,
                 remap: Remap | None = None) -> torch.nn.Module:
    """A network from `factory`, filled from the file at `path`, in eval mode, float32, on `device`."""
    return fill_network(factory, read_weights(path, needed_by), source=str(path), needed_by=needed_by, device=device,
                        error=AnnotatorLoadError, remap=remap)
