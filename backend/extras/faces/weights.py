"""Filling a face network we build ourselves from a stranger's weights file.

The file is read only through the studio's safe loader (format by content,
pickles with weights_only=True, so nothing in it runs). The network is built
empty and every tensor must match a key and a shape of it: a file of another
network is refused with the reason, never half-loaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from backend.extras.faces.errors import FaceRestoreError
from backend.extras.spandrel_models import ExtrasModelError, read_weights

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
    return fill_network(factory, read_tensors(path, needed_by), str(path), needed_by, device)


def fill_network(factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], source: str,
                 needed_by: str, device: torch.device | str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):  # no memory, no random init: every value comes from the file
            model = factory()
    expected = model.state_dict()
    tensors = dict(state_dict)
    for key in expected:
        if key.endswith(_OPTIONAL_SUFFIX) and key not in tensors:
            tensors[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = [_few("missing", missing), _few("unexpected", unexpected)]
        raise FaceRestoreError(f"{needed_by} cannot use {source}: it is not the network {needed_by} runs "
                               f"({'; '.join(p for p in parts if p)})")
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise FaceRestoreError(
                f"{needed_by} cannot use {source}: {key} has shape {tuple(tensors[key].shape)}, the network needs "
                f"{tuple(want.shape)} (another variant of the network)")
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.float().eval().to(device)


def _few(label: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{label} {', '.join(keys[:3])}{more}"
