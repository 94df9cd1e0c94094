"""A1111's refiner (1.6+): a second checkpoint takes over the last steps of the same schedule.

The base model runs the steps before `switch_at` (a fraction of the schedule, the seeds'
`high_noise_fraction`), hands its latents over, and the refiner runs the rest: diffusers'
"ensemble of expert denoisers" (`denoising_end` / `denoising_start`). Any checkpoint may refine,
as in A1111; an SDXL refiner is the usual one.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NO_REFINER = ("", "None")


class Refiner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None  # title "name [hash]", file name or name; None / "" / "None": off
    switch_at: float = Field(0.8, gt=0.0, lt=1.0)  # fraction of the schedule the base runs

    @property
    def enabled(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.strip() not in NO_REFINER

    def base_steps(self, steps: int) -> int:
        """How many of `steps` the base runs: diffusers' count of timesteps above the switch point."""
        return min(steps, max(0, round(steps * self.switch_at)))
