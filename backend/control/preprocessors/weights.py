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
from backend.models.safe_load import read_state_dict

Remap = Callable[[dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]]


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


def build_empty(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The network with no memory behind its tensors: random init of 100M weights is wasted time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's renamed-model notices
        with torch.device("meta"):
            return factory()


def load_network(factory: Callable[[], torch.nn.Module], path: Path, needed_by: str, device,
                 remap: Remap | None = None) -> torch.nn.Module:
    """A network from `factory`, filled from the file at `path`, in eval mode, float32, on `device`."""
    return fill_network(factory, read_weights(path, needed_by), str(path), needed_by, device, remap)


def fill_network(factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], source: str,
                 needed_by: str, device, remap: Remap | None = None) -> torch.nn.Module:
    model = build_empty(factory)
    expected = list(model.state_dict().keys())
    if remap is not None:
        state_dict = remap(state_dict, expected)
    known = set(expected)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in known]
    if missing or unexpected:
        raise AnnotatorLoadError(
            f"{needed_by} cannot use {source}: it is not the network this preprocessor runs "
            f"({_few('missing', missing)}{'; ' if missing and unexpected else ''}{_few('unexpected', unexpected)})")
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:  # shapes differ: another variant of the network
        lines = str(exc).strip().splitlines()
        raise AnnotatorLoadError(f"{needed_by} cannot use {source}: tensor shapes do not match the network "
                                 f"({lines[-1].strip()[:300] if lines else 'size mismatch'})") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer no file carries: a bug of ours, not of the file
        raise RuntimeError(f"{type(model).__name__}: no values for {left[:3]} after loading")
    return model.float().eval().to(device)


def _few(label: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{label} {', '.join(keys[:3])}{more}"
