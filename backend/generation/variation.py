"""A1111's "Extra" seed options: variation seed, variation strength, resize seed from width / height.

Image k of a request starts from the noise of its seed (seed + k). With a
variation seed, that noise is the spherical interpolation, at the variation
strength, between the seed's noise and the variation seed's (subseed + k)
noise; strength 0 is the seed's own noise, strength 1 the variation seed's.
With "resize seed from", the (varied) noise is drawn at that size and placed
in the middle of the seed's noise at the real size, cropped where it is
larger, so a seed keeps its composition at another size.

Noise is drawn the way A1111 draws it with `randn_source: CPU`: one CPU
generator per image, a (C, H/8, W/8) tensor each, so the same seed, variation
seed and strength give the same pixels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


def resolve_subseed(subseed: int) -> int:
    """-1 means a random variation seed, chosen once per request (as the seed)."""
    return random.randrange(2**32 - 1) if subseed == -1 else subseed


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (strength 0) to `high` (strength 1), A1111's way.

    Both are one image's (C, H, W) noise; norms are taken along dim 1, as A1111
    does, so its pictures are reproduced. Nearly parallel noise falls back to
    plain linear interpolation (A1111 swaps the weights there; noise that
    close never happens with real seeds).
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - strength) + high * strength
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + \
        (torch.sin(strength * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device, dtype=torch.float32)


def _place(small: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """`small` centred in a copy of `into` (both C, H, W), cropped where it is larger, as A1111 does."""
    out = into.clone()
    dx = (into.shape[2] - small.shape[2]) // 2
    dy = (into.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w].to(out.dtype)
    return out


@dataclass
class NoiseVariation:
    """How one batch's noise departs from its seeds' own noise; `active` is False when it does not."""

    seeds: list[int]
    subseeds: list[int]
    strength: float = 0.0
    resize_from: tuple[int, int] | None = None  # (width, height) in pixels
    latent_scale: int = 8  # pixels per latent cell (the VAE's scale factor)
    generator_device: str = "cpu"
    _drawn: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return self.strength > 0 or self.resize_from is not None

    def _noise_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.resize_from is None:
            return shape
        width, height = self.resize_from
        return (shape[0], max(height // self.latent_scale, 1), max(width // self.latent_scale, 1))

    def _draw(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        key = (seed, shape)
        if key not in self._drawn:  # the same noise is varied again at every masked-blend step
            self._drawn[key] = _randn(seed, shape, self.generator_device)
        return self._drawn[key]

    def apply(self, noise: torch.Tensor) -> torch.Tensor:
        """The batch's noise (B, C, H, W), drawn from its seeds' generators, varied.

        Image k of the batch is taken to be seed k's noise: with no resize that
        is used as it is, so strength 0 gives it back bit for bit.
        """
        if not self.active:
            return noise
        if noise.shape[0] != len(self.seeds):
            raise ValueError(f"noise for {noise.shape[0]} images, seeds for {len(self.seeds)}")
        varied = []
        for k, own in enumerate(noise):
            shape = tuple(own.shape)
            small = self._noise_shape(shape)
            base = own.float().cpu() if small == shape else self._draw(self.seeds[k], small)
            if self.strength > 0:
                base = slerp(self.strength, base, self._draw(self.subseeds[k], small))
            varied.append(_place(base, own.float().cpu()) if small != shape else base)
        return torch.stack(varied).to(device=noise.device, dtype=noise.dtype)


class _VariedAddNoise:
    """Mixed into a scheduler class: `add_noise` (how img2img noises its start) uses the varied noise."""

    noise_variation: NoiseVariation

    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(original_samples, self.noise_variation.apply(noise), timesteps)


def with_variation(scheduler, variation: NoiseVariation):
    """A new scheduler like `scheduler` whose `add_noise` varies the noise it is given.

    diffusers' img2img pipelines draw their noise from the seeds' generators and
    hand it to `scheduler.add_noise` (at the start, and at each masked-blend
    step of a 4-channel inpaint); this subclass is the one place that noise can
    be varied without copying the pipelines. The class keeps the scheduler's name.
    """
    if not variation.active:
        return scheduler
    base = type(scheduler)
    cls = type(base.__name__, (_VariedAddNoise, base), {"__module__": base.__module__})
    varied = cls.from_config(scheduler.config)
    varied.noise_variation = variation
    return varied
