"""Filling a face network we build ourselves from a stranger's weights file.

The file is read only through the studio's safe loader (format by content,
pickles with weights_only=True, so nothing in it runs). The network is built
empty and every tensor must match a key and a shape of it: a file of another
network is refused with the reason, never half-loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from backend.extras.faces.errors import FaceRestoreError
from backend.extras.spandrel_models import ExtrasModelError, read_weights
from backend.models.fill import fill_network

# BatchNorm's step counter: files saved by old torch versions lack it, and it never affects inference.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def read_tensors(path: Path, needed_by: str) -> dict[str, torch.Tensor]:
    """The flat tensors of `path` (BasicSR `params_ema`/`params` and DataParallel `module.` unwrapped)."""
    try:
        return read_weights(path)
    except ExtrasModelError as exc:
        raise FaceRestoreError(f"{needed_by} cannot use {path}: {exc}") from None


def load_network(factory: Callable[[], torch.nn.Module], path: Path, needed_by: str,
                 device: torch.device | str) -> torch.nn.Module:
    """The network from `factory`, filled from `path`, float32, in eval mode, on `device`."""
    return fill_network(factory, read_tensors(path, needed_by), source=str(path), needed_by=needed_by, device=device,
                        error=FaceRestoreError, optional_suffixes=(_OPTIONAL_SUFFIX,))
