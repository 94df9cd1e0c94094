"""The one typed request shared by the Gradio UI and the REST API.

A request carries everything one generation needs, the checkpoint included,
so two users never share hidden state. Validation raises clear messages the way
diffusers' `check_inputs` does; pydantic's ValidationError names the field.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES, effective_schedule

MIN_SIZE = 64
MAX_SIZE = 4096
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100

HiresUpscaler = Literal["Latent", "Latent (nearest)", "Latent (bicubic)", "Lanczos", "Nearest"]
HIRES_UPSCALERS: tuple[str, ...] = HiresUpscaler.__args__  # type: ignore[attr-defined]
LATENT_UPSCALERS = ("Latent", "Latent (nearest)", "Latent (bicubic)")


def _check_size(name: str, value: int) -> int:
    if value % 8:
        raise ValueError(f"{name} must be a multiple of 8, got {value}")
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise ValueError(f"{name} must be between {MIN_SIZE} and {MAX_SIZE}, got {value}")
    return value


class HiresFix(BaseModel):
    """A1111's "Hires. fix": generate at the base size, upscale, then refine."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    upscaler: HiresUpscaler = "Latent"
    upscale_by: float = Field(2.0, ge=1.0, le=4.0)
    resize_x: int = Field(0, ge=0)  # 0 = use upscale_by
    resize_y: int = Field(0, ge=0)
    steps: int = Field(0, ge=0, le=MAX_STEPS)  # 0 = same as the first pass
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Final (width, height), rounded down to multiples of 8 like A1111."""
        if self.resize_x or self.resize_y:
            if self.resize_x and self.resize_y:
                w, h = self.resize_x, self.resize_y
            elif self.resize_x:
                w, h = self.resize_x, self.resize_x * height / width
            else:
                w, h = self.resize_y * width / height, self.resize_y
        else:
            w, h = width * self.upscale_by, height * self.upscale_by
        w, h = int(w) // 8 * 8, int(h) // 8 * 8
        _check_size("hires width", w)
        _check_size("hires height", h)
        return w, h


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"  # A1111's "Schedule type"
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    width: int = 512
    height: int = 512
    seed: int = Field(-1, ge=-1, le=2**32 - 1)  # -1 = random
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)  # images per sampling pass
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT)  # "Batch count": sampling passes
    clip_skip: int = Field(1, ge=1, le=12)
    hires: HiresFix = Field(default_factory=HiresFix)
    # Title "name [hash]", file name, or name without extension; None = the selected one.
    checkpoint: str | None = None
    save_images: bool = True
    # Extension parameters, keyed by extension id (see backend/extensions).
    extension_args: dict[str, dict] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int, info) -> int:
        return _check_size(info.field_name, value)

    @field_validator("cfg_scale")
    @classmethod
    def _finite_cfg(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("cfg_scale must be a finite number")
        return value

    @field_validator("sampler_name")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if value not in SCHEDULE_TYPES:
            raise ValueError(f"unknown schedule type {value!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")
        return value

    @model_validator(mode="after")
    def _sampler_schedule(self) -> "Txt2ImgRequest":
        effective_schedule(self.sampler_name, self.scheduler)  # e.g. "Euler a" has no Karras
        return self

    @model_validator(mode="after")
    def _hires_size(self) -> "Txt2ImgRequest":
        if self.hires.enabled:
            self.hires.target_size(self.width, self.height)
        return self
