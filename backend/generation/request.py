"""The one typed request shared by the Gradio UI and the REST API.

A request carries everything one generation needs, the checkpoint included,
so two users never share hidden state. Validation raises clear messages the way
diffusers' `check_inputs` does; pydantic's ValidationError names the field.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from backend.control.units import MAX_UNITS, ControlUnit
from backend.generation.samplers import BUILTIN_SAMPLERS, SCHEDULE_TYPES, SamplerCatalog
from backend.images.resize import ResizeMode
from backend.sdxl.refiner import Refiner
from backend.sdxl.size_conditioning import SizeConditioning

MIN_SIZE = 64
MAX_SIZE = 4096
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100

LATENT_UPSCALERS = ("Latent", "Latent (nearest)", "Latent (bicubic)")
# Besides these, hires. fix takes any upscaler of models/ESRGAN etc. by name (checked when the job starts).
HIRES_UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALERS, "Lanczos", "Nearest")


def samplers_of(info: ValidationInfo) -> SamplerCatalog:
    """The samplers a request is checked against: the studio's own (built-ins and extensions'), passed as
    `model_validate(data, context=service.request_context)`; without a context, the built-in table."""
    return (info.context or {}).get("samplers") or BUILTIN_SAMPLERS


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
    upscaler: str = Field("Latent", min_length=1)
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


class GenerationRequest(BaseModel):
    """What txt2img and img2img share: prompt, sampling, seed, batch, model."""

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
    # A1111's "Extra" seed options (backend/generation/variation.py); strength 0 and sizes 0 = off.
    subseed: int = Field(-1, ge=-1, le=2**32 - 1)  # variation seed; -1 = random
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(0, ge=0, le=MAX_SIZE)
    seed_resize_from_h: int = Field(0, ge=0, le=MAX_SIZE)
    tiling: bool = False  # a picture that tiles seamlessly (circular padding for this job: tiling.py)
    # SDXL's original size / crop / target size conditioning; the defaults are A1111's (the picture's size).
    sdxl_conditioning: SizeConditioning = Field(default_factory=SizeConditioning)
    # A1111's refiner_checkpoint / refiner_switch_at: another checkpoint runs the schedule's last part.
    refiner: Refiner = Field(default_factory=Refiner)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)  # images per sampling pass
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT)  # "Batch count": sampling passes
    clip_skip: int = Field(1, ge=1, le=12)
    restore_faces: bool = False  # the face_restoration_model setting, after each picture
    # This request's choice instead of the settings (the API's override_settings); None = the setting.
    face_restoration_model: Literal["CodeFormer", "GFPGAN"] | None = None
    code_former_weight: float | None = Field(None, ge=0.0, le=1.0)
    # Title "name [hash]", file name, or name without extension; None = the selected one.
    checkpoint: str | None = None
    vae: str | None = None  # "Automatic", "None" or a file in models/VAE; None = the sd_vae setting
    save_images: bool = True
    # ControlNet and IP-Adapter units (the ControlNet accordion, or the API's alwayson_scripts.ControlNet).
    controlnet_units: list[ControlUnit] = Field(default_factory=list, max_length=MAX_UNITS)
    # Extension parameters, keyed by extension id (see backend/extensions).
    extension_args: dict[str, dict] = Field(default_factory=dict)
    # A Script-dropdown entry that runs the whole job itself (X/Y/Z plot...), and its inputs by name.
    script_name: str | None = None
    script_args: dict[str, Any] = Field(default_factory=dict)

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
    def _known_sampler(cls, value: str, info: ValidationInfo) -> str:
        samplers = samplers_of(info)
        if not samplers.knows(value):
            raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(samplers.names())}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if value not in SCHEDULE_TYPES:
            raise ValueError(f"unknown schedule type {value!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, value: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("prompt_limit")  # the studio's PromptLimit; none: not checked here
        if limit is not None:
            limit.check(value, info.field_name.replace("_", " "))
        return value

    @model_validator(mode="after")
    def _sampler_schedule(self, info: ValidationInfo) -> "GenerationRequest":
        samplers_of(info).effective_schedule(self.sampler_name, self.scheduler)  # e.g. "Euler a" has no Karras
        return self


class Txt2ImgRequest(GenerationRequest):
    hires: HiresFix = Field(default_factory=HiresFix)

    @model_validator(mode="after")
    def _hires_size(self) -> "Txt2ImgRequest":
        if self.hires.enabled:
            self.hires.target_size(self.width, self.height)
        return self


MaskedContent = Literal["fill", "original", "latent noise", "latent nothing"]
MASKED_CONTENT: tuple[str, ...] = MaskedContent.__args__  # type: ignore[attr-defined]
MAX_MASK_BLUR = 64
MAX_OUTPAINT = 1024


class Outpaint(BaseModel):
    """Pixels to add on each side (multiples of 8); all 0 = no outpainting."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=MAX_OUTPAINT)
    right: int = Field(0, ge=0, le=MAX_OUTPAINT)
    up: int = Field(0, ge=0, le=MAX_OUTPAINT)
    down: int = Field(0, ge=0, le=MAX_OUTPAINT)

    @field_validator("left", "right", "up", "down")
    @classmethod
    def _multiple_of_8(cls, value: int, info) -> int:
        if value % 8:
            raise ValueError(f"outpaint {info.field_name} must be a multiple of 8, got {value}")
        return value

    @property
    def enabled(self) -> bool:
        return any((self.left, self.right, self.up, self.down))


class SdUpscale(BaseModel):
    """A1111's "SD upscale" script: upscale the picture, then img2img it in overlapping tiles of width x height."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    upscaler: str = Field("None", min_length=1)  # "None" = Lanczos, as the script's first choice
    scale_factor: float = Field(2.0, ge=1.0, le=4.0)
    overlap: int = Field(64, ge=0, le=256)


class Img2ImgRequest(GenerationRequest):
    """img2img, inpaint and outpaint: A1111's img2img fields on top of the shared ones.

    `init_images` and `mask` are already decoded (backend/images/loading.py);
    image k of a batch starts from init_images[k % len(init_images)].
    width/height are the size the picture is processed at; for "Only masked"
    the crop around the mask is processed at that size and the output keeps
    the input's size; outpainting grows the input by `outpaint` on each side.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    init_images: list[Image.Image] = Field(min_length=1, max_length=MAX_BATCH_SIZE)
    mask: Image.Image | None = None
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: ResizeMode = "Just resize"
    mask_blur: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    inpainting_fill: MaskedContent = "original"
    inpaint_full_res: bool = False  # "Inpaint area: Only masked"
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: bool = False  # "Mask mode: Inpaint not masked"
    outpaint: Outpaint = Field(default_factory=Outpaint)
    sd_upscale: SdUpscale = Field(default_factory=SdUpscale)

    @model_validator(mode="after")
    def _sd_upscale_alone(self) -> "Img2ImgRequest":
        if self.sd_upscale.enabled and (self.mask is not None or self.outpaint.enabled):
            raise ValueError("SD upscale works on the whole picture: send no mask and no outpainting with it")
        if self.sd_upscale.enabled and self.sd_upscale.overlap >= min(self.width, self.height):
            raise ValueError(f"SD upscale overlap {self.sd_upscale.overlap} must be smaller than the tile "
                             f"({self.width}x{self.height})")
        return self

    @model_validator(mode="after")
    def _outpaint_alone(self) -> "Img2ImgRequest":
        if self.outpaint.enabled and self.mask is not None:
            raise ValueError("outpainting makes its own mask: send no mask with it")
        if self.outpaint.enabled and len(self.init_images) > 1:
            raise ValueError("outpainting takes one image")
        return self

    @property
    def inpainting(self) -> bool:
        return self.mask is not None or self.outpaint.enabled
