"""Filling a network that the studio defines (or a library defines) from a state dict already read safely.

The network is built on the meta device, so no memory is spent on a random
init that the file replaces anyway; every value must then come from the
file. A file for another network, or another variant of it, is refused with
the keys or the shape that differ, in the caller's own error type.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

Remap = Callable[[dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]]


def build_empty(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The network with no memory behind its tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. timm's renamed-model notices
        with torch.device("meta"):
            return factory()


def few(label: str, keys: list[str]) -> str:
    """'missing a, b, c and 4 more' (empty when there are none)."""
    if not keys:
        return ""
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{label} {', '.join(keys[:3])}{more}"


def fill_network(factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], *, source: str,
                 needed_by: str, device, error: type[Exception], remap: Remap | None = None,
                 optional_suffixes: tuple[str, ...] = ()) -> torch.nn.Module:
    """The network from `factory` holding `state_dict`, float32, in eval mode, on `device`.

    `remap` renames the file's keys to the network's first; keys ending in
    one of `optional_suffixes` (BatchNorm's `num_batches_tracked`) may be
    absent. Raises `error` naming `needed_by`, `source` and what differs.
    """
    model = build_empty(factory)
    expected = model.state_dict()
    tensors = remap(state_dict, list(expected)) if remap is not None else dict(state_dict)
    for key in expected:
        if key not in tensors and optional_suffixes and key.endswith(optional_suffixes):
            tensors[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = "; ".join(p for p in (few("missing", missing), few("unexpected", unexpected)) if p)
        raise error(f"{needed_by} cannot use {source}: it is not the network {needed_by} runs ({parts})")
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise error(f"{needed_by} cannot use {source}: {key} has shape {tuple(tensors[key].shape)}, the "
                        f"network needs {tuple(want.shape)} (another variant of the network)")
    model.load_state_dict(tensors, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer no file carries: a bug of ours, not of the file
        raise RuntimeError(f"{type(model).__name__}: no values for {left[:3]} after loading")
    return model.float().eval().to(device)
