"""Run one text-to-image request the way A1111 does, on a diffusers pipeline.

Seeds: seed -1 picks one random 32-bit seed per request; image k of the whole
request (over n_iter batches of batch_size) uses seed + k, and its initial noise
comes from its own CPU generator seeded with seed + k, so a seed gives the same
picture whatever the batch size or the image's place in the batch.

Every sampling pass runs on its own pipeline object (built from the loaded
pipeline's components: the weights are shared, not copied) with its own new scheduler, so concurrent requests never
share a scheduler or the pipeline's per-call state (`_interrupt`, guidance...).
`loaded.pipe` itself is never modified.
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
    StableDiffusionXLInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from backend.generation import hires as hr
from backend.generation.job import JobControl
from backend.generation.preview import latents_to_preview
from backend.generation.request import Txt2ImgRequest
from backend.generation.samplers import make_scheduler, scheduler_label
from backend.images.infotext import format_infotext
from backend.models.types import LoadedCheckpoint

VERSION = f"diffusers {diffusers.__version__}"


@dataclass
class Txt2ImgOutput:
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


def full_mask_inputs(width: int, height: int, n: int) -> dict:
    """txt2img on a 9-channel inpainting UNet, as A1111 does it: everything masked.

    With a white mask the pipeline's masked image is all zeros (mid-grey), the
    conditioning A1111 gives inpainting models in txt2img.
    """
    return {"image": [Image.new("RGB", (width, height))] * n,
            "mask_image": [Image.new("L", (width, height), 255)] * n}


def img2img_class(pipe) -> type:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return StableDiffusionXLImg2ImgPipeline
    return StableDiffusionImg2ImgPipeline


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


class _Txt2ImgRun:
    def __init__(self, loaded: LoadedCheckpoint, request: Txt2ImgRequest, job: JobControl,
                 device_settings, prompt: str, negative_prompt: str):
        self.loaded, self.request, self.job = loaded, request, job
        self.family = loaded.variant.family
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.generator_device = getattr(device_settings, "generator_device", "cpu")
        self.inpainting = loaded.pipe.unet.config.in_channels == 9
        self.hires_steps = hr.second_pass_steps(request.hires, request.steps) if request.hires.enabled else 0
        self._embeds: dict[int, dict] = {}

    # --- building blocks ---
    def scheduler(self):
        return make_scheduler(self.request.sampler_name, self.request.scheduler,
                              self.loaded.pipe.scheduler.config, self.loaded.variant.prediction_type)

    def generators(self, seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator(self.generator_device).manual_seed(s) for s in seeds]

    def initial_noise(self, pipe, generators: list[torch.Generator]) -> torch.Tensor:
        scale = pipe.vae_scale_factor
        shape = (1, pipe.vae.config.latent_channels, self.request.height // scale, self.request.width // scale)
        noise = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
        return torch.cat(noise).to(pipe.unet.dtype)

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

    # --- one batch ---
    def batch(self, seeds: list[int], job_no: int) -> list[Image.Image]:
        req = self.request
        base = self.loaded.pipe
        cls = inpaint_class(base) if self.inpainting else type(base)
        pipe = derive_pipeline(base, cls, self.scheduler())
        generators = self.generators(seeds)
        latents = self.initial_noise(pipe, generators)
        output_type = "latent" if req.hires.enabled else "pil"
        extra = full_mask_inputs(req.width, req.height, len(seeds)) | {"strength": 1.0} if self.inpainting else {}
        text = f"Batch {job_no + 1} of {req.n_iter}"
        images, stopped = self.sample(pipe, req.steps, job_no, text, len(seeds), width=req.width,
                                      height=req.height, num_inference_steps=req.steps, latents=latents,
                                      generator=generators, output_type=output_type, **extra)
        if not req.hires.enabled:
            return images
        if stopped:  # A1111 skips the hires pass of a stopped batch
            return hr.decode_latents(pipe, images, upcast=self.family.is_sdxl)
        return self.hires_pass(pipe, images, seeds, job_no)

    def hires_pass(self, pipe, latents: torch.Tensor, seeds: list[int], job_no: int) -> list[Image.Image]:
        req, fix = self.request, self.request.hires
        size = fix.target_size(req.width, req.height)
        if hr.is_latent_upscaler(fix.upscaler):
            image = hr.upscale_latents(latents, size, fix.upscaler, pipe.vae_scale_factor)
        else:
            image = hr.upscale_images(hr.decode_latents(pipe, latents, upcast=self.family.is_sdxl),
                                      size, fix.upscaler)
        if self.hires_steps == 0:  # strength too low for a single step: the upscale is the result
            return hr.decode_latents(pipe, image, upcast=self.family.is_sdxl) if torch.is_tensor(image) else image
        extra = {}
        if self.inpainting:  # the second pass of an inpainting model also runs fully masked, on pixels
            if torch.is_tensor(image):
                image = hr.decode_latents(pipe, image, upcast=self.family.is_sdxl)
            extra = {"mask_image": [Image.new("L", size, 255)] * len(seeds), "width": size[0], "height": size[1]}
        cls = inpaint_class(self.loaded.pipe) if self.inpainting else img2img_class(self.loaded.pipe)
        img2img = derive_pipeline(self.loaded.pipe, cls, self.scheduler())
        text = f"Batch {job_no + 1} of {req.n_iter}, hires fix"
        images, _ = self.sample(img2img, self.hires_steps, job_no, text, len(seeds), **extra, image=image,
                                strength=fix.denoising_strength, num_inference_steps=fix.steps or req.steps,
                                generator=self.generators(seeds), output_type="pil")
        return images

    # --- infotext ---
    def params(self, seed: int) -> dict[str, object]:
        req, info = self.request, self.loaded.info
        params: dict[str, object] = {
            "Steps": req.steps,
            "Sampler": req.sampler_name,
            "Schedule type": scheduler_label(req.sampler_name, req.scheduler),
            "CFG scale": req.cfg_scale,
            "Seed": seed,
            "Size": f"{req.width}x{req.height}",
            "Model hash": info.shorthash,
            "Model": info.model_name,
        }
        if req.hires.enabled:
            params["Denoising strength"] = req.hires.denoising_strength
        if req.clip_skip > 1:
            params["Clip skip"] = req.clip_skip
        if req.hires.enabled:
            params.update(hr.infotext_params(req.hires))
        params["Version"] = VERSION
        return params


def run_txt2img(loaded: LoadedCheckpoint, request: Txt2ImgRequest, job: JobControl, *, device_settings,
                prompt: str, negative_prompt: str) -> Txt2ImgOutput:
    """Generate request.n_iter batches of request.batch_size images.

    `prompt`/`negative_prompt` are the final texts (styles already applied).
    Interrupt keeps the finished batches and the partly denoised current one,
    then stops; skip ends the current batch (its partial images are kept, as in
    A1111) and goes on with the next. The caller calls `job.finish()`.
    """
    if not isinstance(loaded.pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ValueError(f"{loaded.info.name} ({loaded.variant.label}) cannot do text-to-image; use img2img")
    if loaded.pipe.unet.config.in_channels not in (4, 9):
        raise ValueError(f"{loaded.info.name}: a UNet with {loaded.pipe.unet.config.in_channels} input channels "
                         "cannot do text-to-image")
    make_scheduler(request.sampler_name, request.scheduler, loaded.pipe.scheduler.config)  # fail before starting

    run = _Txt2ImgRun(loaded, request, job, device_settings, prompt, negative_prompt)
    seed = resolve_seed(request.seed)
    out = Txt2ImgOutput()
    job.begin(request.n_iter, request.n_iter * (request.steps + run.hires_steps))
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
            out.infotexts.append(format_infotext(prompt, negative_prompt, params))
        job.take_skip()
    out.interrupted = job.interrupted
    return out
