"""Run an image model over a picture tile by tile, blending the tiles so no seam shows.

The picture is cut into cores of at most `tile` input pixels (spread evenly, so no sliver is left at the
end); each tile reads its core plus `overlap` pixels of context on every side, grown with more picture (or
padding, where the picture is smaller) until it meets the model's size requirements. Around each core
edge the two neighbours are cross-faded with complementary linear ramps `overlap` pixels wide, centred on
the edge, so the weights add up to exactly 1 everywhere and no weight buffer is needed; outside the ramps a
tile contributes nothing, so the outer half of its context only feeds the model.

Results are accumulated in float32, on the model's device, one row of tiles at a time: rows whose
contributions are complete are turned into 8-bit pixels at once, so the float buffer is a strip of about
(tile + overlap) * scale rows, never the whole upscaled picture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from backend.extras.upscalers.errors import UpscaleError, UpscaleInterrupted


class SizeRule(Protocol):
    """spandrel's SizeRequirements: what width and height a model accepts."""
    minimum: int
    multiple_of: int
    square: bool


Model = Callable[[torch.Tensor], torch.Tensor]  # (1, C, h, w) in [0, 1] -> (1, C', h*scale, w*scale)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels (read) and output pixels (keep)."""
    read0: int
    read1: int
    keep0: int
    keep1: int
    ramp_in: int   # output pixels of rising weight at keep0 (0 at the picture's edge)
    ramp_out: int  # output pixels of falling weight before keep1


def cores(length: int, tile: int) -> list[tuple[int, int]]:
    """Split 0..length into ceil(length / tile) near-equal cores (tile <= 0: one core)."""
    if tile <= 0 or length <= tile:
        return [(0, length)]
    n = math.ceil(length / tile)
    edges = [round(i * length / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tile_count(width: int, height: int, tile: int) -> int:
    return len(cores(width, tile)) * len(cores(height, tile))


def spans(length: int, tile: int, overlap: int, scale: int) -> list[Span]:
    parts = cores(length, tile)
    # A core must hold both of its ramps; the smallest core bounds the overlap.
    o = 0 if len(parts) == 1 else max(0, min(overlap, min(b - a for a, b in parts)))
    ramp = o * scale
    out = []
    for a, b in parts:
        first, last = a == 0, b == length
        out.append(Span(read0=max(0, a - o), read1=min(length, b + o),
                        keep0=0 if first else a * scale - ramp // 2,
                        keep1=length * scale if last else b * scale + ramp - ramp // 2,
                        ramp_in=0 if first else ramp, ramp_out=0 if last else ramp))
    return out


def weights(span: Span, device: torch.device) -> torch.Tensor:
    w = torch.ones(span.keep1 - span.keep0, dtype=torch.float32, device=device)
    if span.ramp_in:
        w[:span.ramp_in] = (torch.arange(span.ramp_in, device=device) + 0.5) / span.ramp_in
    if span.ramp_out:
        w[len(w) - span.ramp_out:] = 1 - (torch.arange(span.ramp_out, device=device) + 0.5) / span.ramp_out
    return w


def required_size(height: int, width: int, rule: SizeRule | None) -> tuple[int, int]:
    """The smallest (h, w) >= the given one that the model accepts."""
    if rule is None:
        return height, width
    m = max(1, int(rule.multiple_of))
    h, w = (math.ceil(max(v, int(rule.minimum)) / m) * m for v in (height, width))
    return (max(h, w),) * 2 if rule.square else (h, w)


def grow(read0: int, read1: int, need: int, length: int) -> tuple[int, int, int]:
    """Widen [read0, read1) to `need` pixels with more of the picture (forward, then back); the rest is padding."""
    extra = need - (read1 - read0)
    forward = min(extra, length - read1)
    back = min(extra - forward, read0)
    return read0 - back, read1 + forward, extra - forward - back


def pad_end(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad right and bottom: reflect as far as the picture allows (size - 1), then repeat the edge."""
    if not pad_h and not pad_w:
        return x
    rh, rw = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
    if rh or rw:
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if pad_h - rh or pad_w - rw:
        x = F.pad(x, (0, pad_w - rw, 0, pad_h - rh), mode="replicate")
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, h, w) float in [0, 1] -> (h, w, C) uint8 on the CPU, rounded. Works in place on float32 input
    (callers hand over buffers they are done with), so an untiled result is not copied in float."""
    x = x.float()
    if x.is_inference() and not torch.is_inference_mode_enabled():
        x = x.clone()  # a model's output made under inference_mode cannot be changed in place outside it
    return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def upscale_tiled(model: Model, picture: torch.Tensor, *, scale: int, rule: SizeRule | None, tile: int,
                  overlap: int, device: torch.device, dtype: torch.dtype,
                  progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """`picture` (C, H, W) uint8 on the CPU -> the upscaled (H*scale, W*scale, C') uint8 array."""
    _, height, width = picture.shape
    rows, cols = spans(height, tile, overlap, scale), spans(width, tile, overlap, scale)
    total, done = len(rows) * len(cols), 0
    col_weights = [weights(c, device) for c in cols]
    out: np.ndarray | None = None
    carry: torch.Tensor | None = None  # finished tiles' contributions to rows the next row of tiles shares
    for r, row in enumerate(rows):
        row_weight = weights(row, device)
        strip: torch.Tensor | None = None
        for col, col_weight in zip(cols, col_weights):
            if should_stop is not None and should_stop():
                raise UpscaleInterrupted("upscaling was interrupted")
            result, top, left = _run_tile(model, picture, row, col, scale, rule, device, dtype)
            result = result[:, row.keep0 - top:row.keep1 - top, col.keep0 - left:col.keep1 - left]
            if total == 1:  # one tile: nothing to blend
                out = to_uint8(result)
            else:
                if strip is None:
                    strip = torch.zeros(result.shape[0], row.keep1 - row.keep0, width * scale,
                                        dtype=torch.float32, device=device)
                    if carry is not None:
                        strip[:, :carry.shape[1]] += carry
                    if out is None:
                        out = np.empty((height * scale, width * scale, result.shape[0]), dtype=np.uint8)
                strip[:, :, col.keep0:col.keep1].addcmul_(result, row_weight[:, None] * col_weight[None, :])
            del result
            done += 1
            if progress is not None:
                progress(done, total)
        if strip is not None:
            finished = (rows[r + 1].keep0 if r + 1 < len(rows) else row.keep1) - row.keep0
            out[row.keep0:row.keep0 + finished] = to_uint8(strip[:, :finished])
            carry = strip[:, finished:].clone() if r + 1 < len(rows) else None
            del strip
    assert out is not None
    return out


def _run_tile(model: Model, picture: torch.Tensor, row: Span, col: Span, scale: int, rule: SizeRule | None,
              device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int, int]:
    """The model's output for one tile, (C', h, w) without padding, and its top-left in output pixels."""
    _, height, width = picture.shape
    need_h, need_w = required_size(row.read1 - row.read0, col.read1 - col.read0, rule)
    y0, y1, pad_h = grow(row.read0, row.read1, need_h, height)
    x0, x1, pad_w = grow(col.read0, col.read1, need_w, width)
    x = picture[None, :, y0:y1, x0:x1].to(device).to(torch.float32).div_(255)
    x = pad_end(x, pad_h, pad_w).to(dtype)
    y = model(x)
    want = ((y1 - y0 + pad_h) * scale, (x1 - x0 + pad_w) * scale)
    if y.ndim != 4 or tuple(y.shape[-2:]) != want:
        raise UpscaleError(f"the model turned a {x.shape[-1]}x{x.shape[-2]} tile into {tuple(y.shape)}, not "
                           f"{want[1]}x{want[0]} (x{scale}); the file is damaged or not an upscaler")
    return y[0, :, :(y1 - y0) * scale, :(x1 - x0) * scale], y0 * scale, x0 * scale
