"""Request and response shapes of the A1111-compatible REST API.

Field names and defaults follow A1111's `/sdapi/v1` so existing clients work
unchanged. A1111 accepts `null` for every field; here a `null` means "use the
default". Unknown fields are refused (422) instead of silently ignored. Which
fields we honour is decided in `backend/api/convert.py`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _NullMeansDefault(BaseModel):
    """A1111's models make every field Optional; clients send null for 'unset'."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class _ProcessingAPI(_NullMeansDefault):
    """Fields txt2img and img2img share in A1111's API."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class StableDiffusionTxt2ImgProcessingAPI(_ProcessingAPI):
    firstpass_image: str | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class StableDiffusionImg2ImgProcessingAPI(_ProcessingAPI):
    init_images: list[str] = Field(default_factory=list, description="base64 images (PNG, JPEG, WebP...)")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                            "3 just resize (latent upscale)")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask: white = change, black = keep")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="true = 'Only masked'")
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = Field(0, description="1 = inpaint not masked")
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = Field(False, description="echo init_images and mask in `parameters`")


class PNGInfoRequest(_NullMeansDefault):
    image: str = Field(description="base64 image")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="the infotext, empty if none")
    items: dict[str, Any] = Field(description="other metadata of the image")
    parameters: dict[str, Any] = Field(description="the infotext parsed into fields")


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs with an infotext 'parameters' chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, infotexts and other generation info")


class ImageToImageResponse(TextToImageResponse):
    pass


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = {}


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem | dict[str, str]]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = []
    img2img: list[str] = []


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_position: int | None = None  # not in A1111: jobs that will run before the caller's


class ProgressResponse(BaseModel):
    progress: float = 0.0
    eta_relative: float = 0.0
    state: ProgressState = ProgressState()
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None
