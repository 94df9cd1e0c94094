"""What every sampling run shares: pipelines per pass, seeds, prompts, progress, the batch loop.

Seeds: seed -1 picks one random 32-bit seed per request; image k of the whole
request (over n_iter batches of batch_size) uses seed + k, and its noise comes
from its own CPU generator seeded with seed + k, so a seed gives the same
picture whatever the batch size or the image's place in the batch.

Every sampling pass runs on its own pipeline object (built from the loaded
pipeline's components: the weights are shared, not copied) with its own new
scheduler, so concurrent requests never share a scheduler or the pipeline's
per-call state (`_interrupt`, guidance...). `loaded.pipe` itself is never modified.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field

import diffusers
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from backend.generation.job import JobControl
from backend.generation.preview import latents_to_preview
from backend.generation.request import GenerationRequest
from backend.generation.samplers import make_scheduler, scheduler_label
from backend.images.infotext import format_infotext
from backend.models.types import LoadedCheckpoint

VERSION = f"diffusers {diffusers.__version__}"


@dataclass
class GenerationOutput:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)  # ordered infotext parameters, per image
    interrupted: bool = False


def resolve_seed(seed: int) -> int:
    """-1 means a random 32-bit seed, chosen once per request."""
    return random.randrange(2**32 - 1) if seed == -1 else seed


def derive_pipeline(pipe, pipeline_cls: type, scheduler):
    """A `pipeline_cls` sharing `pipe`'s modules, with its own scheduler and call state.

    Built from `pipe.components` (diffusers' documented way to reuse weights)
    plus the config flags the new class accepts, which is what `from_pipe` does,
    minus its final `.to(dtype)`: that casts every shared module to one dtype
    (float32 unless told), which would change the weights other requests use
    when precisions are mixed (an fp32 VAE beside an fp16 UNet), and logs a
    warning per module on every call.
    """
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    components = pipe.components
    kwargs = {k: v for k, v in components.items() if k in accepted}
    kwargs.update({k: v for k, v in pipe.config.items()
                   if k in accepted and k not in components and not k.startswith("_")})
    kwargs["scheduler"] = scheduler
    if "add_watermarker" in accepted:  # SDXL: keep the base's choice, not the package default
        kwargs["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    derived = pipeline_cls(**kwargs)
    derived.set_progress_bar_config(disable=True)
    return derived


def inpaint_class(pipe) -> type:
    return StableDiffusionXLInpaintPipeline if isinstance(pipe, StableDiffusionXLPipeline) else StableDiffusionInpaintPipeline


def img2img_class(pipe) -> type:
    return StableDiffusionXLImg2ImgPipeline if isinstance(pipe, StableDiffusionXLPipeline) else StableDiffusionImg2ImgPipeline


class StepCallback:
    """`callback_on_step_end`: progress, live preview, interrupt/skip of one pass."""

    def __init__(self, job: JobControl, family, steps: int):
        self.job, self.family, self.steps = job, family, steps
        self.stopped = False
        self._last_preview = 0

    def __call__(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        # Second-order samplers call back twice per step: report whole steps.
        done = min(self.steps, (i + 1) * self.steps // max(pipe.num_timesteps, 1))
        self.job.advance(done)
        every = self.job.preview_every_n_steps
        if every > 0 and done and done % every == 0 and done != self._last_preview:
            self._last_preview = done
            self.job.set_preview(latents_to_preview(callback_kwargs["latents"], self.family))
        if self.job.should_stop_sampling:
            # diffusers' interrupt: the loop skips the remaining steps, then decodes as usual.
            self.stopped = True
            pipe._interrupt = True
        return callback_kwargs


@torch.no_grad()
def encode_with_clip_skip(pipe, texts: list[str], clip_skip: int) -> torch.Tensor:
    """SD1/SD2 prompt embeddings from the CLIP layer `clip_skip` from the end (1 = last).

    diffusers' own `clip_skip` for these pipelines reads `text_encoder.text_model`,
    which transformers 5 no longer has, so the embeddings are made here and passed
    as `prompt_embeds`, the pipeline's documented input.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    texts = pipe.maybe_convert_prompt(texts, tokenizer)  # multi-vector textual inversion tokens
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(pipe._execution_device)
    hidden_states = encoder(ids, output_hidden_states=True).hidden_states
    hidden = hidden_states[-min(clip_skip, len(hidden_states) - 1)]
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return final_norm(hidden).to(encoder.dtype)


class SamplingRun:
    """One request's sampling: subclasses implement `batch` and `extra_params`."""

    def __init__(self, loaded: LoadedCheckpoint, request: GenerationRequest, job: JobControl,
                 device_settings, prompt: str, negative_prompt: str):
        self.loaded, self.request, self.job = loaded, request, job
        self.family = loaded.variant.family
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.generator_device = getattr(device_settings, "generator_device", "cpu")
        self.inpainting_model = loaded.pipe.unet.config.in_channels == 9
        self._embeds: dict[int, dict] = {}

    # --- what subclasses provide ---
    def steps_per_batch(self) -> int:
        return self.request.steps

    def batch(self, seeds: list[int], job_no: int) -> list[Image.Image]:
        raise NotImplementedError

    def extra_params(self) -> dict[str, object]:
        """Infotext entries after Model (Denoising strength, Hires..., Mask blur...)."""
        return {}

    def size(self) -> tuple[int, int]:
        return self.request.width, self.request.height

    # --- building blocks ---
    def scheduler(self):
        return make_scheduler(self.request.sampler_name, self.request.scheduler,
                              self.loaded.pipe.scheduler.config, self.loaded.variant.prediction_type)

    def generators(self, seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator(self.generator_device).manual_seed(s) for s in seeds]

    def prompt_kwargs(self, pipe, n: int) -> dict:
        prompts, negatives = [self.prompt] * n, [self.negative_prompt] * n
        skip = self.request.clip_skip
        if skip <= 1:
            return {"prompt": prompts, "negative_prompt": negatives}
        if self.family.is_sdxl:  # A1111 2 = diffusers 1
            return {"prompt": prompts, "negative_prompt": negatives, "clip_skip": skip - 1}
        if n not in self._embeds:
            self._embeds[n] = {"prompt_embeds": encode_with_clip_skip(pipe, prompts, skip),
                               "negative_prompt_embeds": encode_with_clip_skip(pipe, negatives, skip)}
        return self._embeds[n]

    def sample(self, pipe, steps: int, job_no: int, text: str, n: int, **kwargs):
        """One pipeline call; returns (images or latents, stopped early)."""
        callback = StepCallback(self.job, self.family, steps)
        self.job.begin_pass(job_no, steps, text)
        try:
            result = pipe(**self.prompt_kwargs(pipe, n), guidance_scale=self.request.cfg_scale,
                          callback_on_step_end=callback, **kwargs)
        finally:
            self.job.end_pass()
        return result.images, callback.stopped

    # --- infotext ---
    def params(self, seed: int) -> dict[str, object]:
        req, info = self.request, self.loaded.info
        width, height = self.size()
        params: dict[str, object] = {
            "Steps": req.steps,
            "Sampler": req.sampler_name,
            "Schedule type": scheduler_label(req.sampler_name, req.scheduler),
            "CFG scale": req.cfg_scale,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model hash": info.shorthash,
            "Model": info.model_name,
        }
        extra = self.extra_params()
        if "Denoising strength" in extra:  # A1111's order: strength, then Clip skip, then the rest
            params["Denoising strength"] = extra.pop("Denoising strength")
        if req.clip_skip > 1:
            params["Clip skip"] = req.clip_skip
        params.update(extra)
        params["Version"] = VERSION
        return params


def check_can_sample(loaded: LoadedCheckpoint, request: GenerationRequest, task: str) -> None:
    """Refuse, before any work, a model or sampler this runner cannot use."""
    if not isinstance(loaded.pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ValueError(f"{loaded.info.name} ({loaded.variant.label}) cannot do {task}")
    channels = loaded.pipe.unet.config.in_channels
    if channels not in (4, 9):
        raise ValueError(f"{loaded.info.name}: a UNet with {channels} input channels cannot do {task}")
    make_scheduler(request.sampler_name, request.scheduler, loaded.pipe.scheduler.config)


def run_batches(run: SamplingRun, job: JobControl) -> GenerationOutput:
    """request.n_iter batches of request.batch_size images.

    Interrupt keeps the finished batches and the partly denoised current one,
    then stops; skip ends the current batch (its partial images are kept, as in
    A1111) and goes on with the next. The caller calls `job.finish()`.
    """
    request = run.request
    seed = resolve_seed(request.seed)
    out = GenerationOutput()
    job.begin(request.n_iter, request.n_iter * run.steps_per_batch())
    for job_no in range(request.n_iter):
        if job.interrupted:
            break
        job.take_skip()  # a skip pressed between batches belongs to none of them
        seeds = [seed + job_no * request.batch_size + i for i in range(request.batch_size)]
        images = run.batch(seeds, job_no)
        for image, image_seed in zip(images, seeds):
            params = run.params(image_seed)
            out.images.append(image)
            out.seeds.append(image_seed)
            out.params.append(params)
            out.infotexts.append(format_infotext(run.prompt, run.negative_prompt, params))
        job.take_skip()
    out.interrupted = job.interrupted
    return out
