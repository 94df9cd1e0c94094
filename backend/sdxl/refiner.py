"""A1111's refiner (1.6+): a second checkpoint takes over the last steps of the same schedule.

The base model runs the schedule until `switch_at` (a fraction of it, the seeds'
`high_noise_fraction`), and the refiner runs the rest on the same latents, schedule and noise:
the "ensemble of expert denoisers". Any checkpoint of the base's latent space may refine, as in
A1111; an SDXL refiner is the usual one. How: backend/sdxl/handover.py.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NO_REFINER = ("", "None")


class Refiner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None  # title "name [hash]", file name or name; None / "" / "None": off
    switch_at: float = Field(0.8, ge=0.01, le=1.0)  # the fraction of the schedule the base runs

    @property
    def enabled(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.strip() not in NO_REFINER
