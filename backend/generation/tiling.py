"""A1111's "Tiling": a picture whose left edge continues its right edge and its top its bottom.

Every padded 2-D convolution of the UNet and the VAE pads circularly (wrapping
round to the other side) instead of with zeros, for one job only. The
modules are shared by every job, so this is done on the device thread, inside
the job's turn, and undone in a `finally`: the next job, whoever sends it,
runs on the convolutions exactly as they were. `padding_mode` is a public
attribute of `torch.nn.Conv2d` that its forward reads on every call; nothing
else about the modules changes.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


def _padded_convolutions(modules: Iterable[nn.Module]) -> list[nn.Conv2d]:
    seen: set[int] = set()
    found = []
    for module in modules:
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d) and id(layer) not in seen and any(
                    p > 0 for p in (layer.padding if isinstance(layer.padding, tuple) else ())):
                seen.add(id(layer))
                found.append(layer)
    return found


@contextmanager
def seamless_tiling(modules: Iterable[nn.Module | None], enabled: bool = True) -> Iterator[int]:
    """Circular padding in the padded convolutions of `modules` while the block runs.

    Yields how many convolutions were switched (0 when not enabled).
    """
    if not enabled:
        yield 0
        return
    layers = _padded_convolutions(modules)
    before = [layer.padding_mode for layer in layers]
    try:
        for layer in layers:
            layer.padding_mode = "circular"
        yield len(layers)
    finally:
        for layer, mode in zip(layers, before):
            layer.padding_mode = mode
