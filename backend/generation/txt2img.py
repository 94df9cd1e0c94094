"""Run one text-to-image request the way A1111 does, on a diffusers pipeline.

The shared machinery (seeds, pipelines per pass, prompts, progress, the batch
loop) lives in sampling.py; this module adds the first pass from noise and
the optional "Hires. fix" second pass.
"""
from __future__ import annotations

import torch
from PIL import Image

from backend.generation import hires as hr
from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from backend.generation.sampling import (
    GenerationOutput,
    SamplingRun,
    check_can_sample,
    img2img_class,
    inpaint_class,
    run_batches,
)
from backend.generation.vae_codec import decode_latents
from backend.generation.variation import NoiseVariation
from backend.models.types import LoadedCheckpoint


def full_mask_inputs(width: int, height: int, n: int) -> dict:
    """txt2img on a 9-channel inpainting UNet, as A1111 does it: everything masked.

    With a white mask the pipeline's masked image is all zeros (mid-grey), the
    conditioning A1111 gives inpainting models in txt2img.
    """
    return {"image": [Image.new("RGB", (width, height))] * n,
            "mask_image": [Image.new("L", (width, height), 255)] * n}


class _Txt2ImgRun(SamplingRun):
    request: Txt2ImgRequest

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hires = self.request.hires
        self.hires_steps = hr.second_pass_steps(hires, self.request.steps) if hires.enabled else 0

    def steps_per_batch(self) -> int:
        return self.request.steps + self.hires_steps

    # --- building blocks ---
    def initial_noise(self, pipe, generators: list[torch.Generator], variation: NoiseVariation) -> torch.Tensor:
        scale = pipe.vae_scale_factor
        shape = (1, pipe.vae.config.latent_channels, self.request.height // scale, self.request.width // scale)
        noise = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
        return variation.apply(torch.cat(noise)).to(pipe.unet.dtype)  # varied in float32, then the UNet's dtype

    # --- one batch ---
    def batch(self, seeds: list[int], job_no: int, variation: NoiseVariation) -> list[Image.Image]:
        req = self.request
        base = self.loaded.pipe
        cls = inpaint_class(base) if self.inpainting_model else type(base)
        pipe = self.pipeline(cls, len(seeds), stage="first" if req.hires.enabled else "single")
        generators = self.generators(seeds)
        latents = self.initial_noise(pipe, generators, variation)
        output_type = "latent" if req.hires.enabled else "pil"
        extra = full_mask_inputs(req.width, req.height, len(seeds)) | {"strength": 1.0} if self.inpainting_model else {}
        text = f"Batch {job_no + 1} of {req.n_iter}"
        images, stopped = self.sample(pipe, req.steps, job_no, text, len(seeds), width=req.width,
                                      height=req.height, num_inference_steps=req.steps, latents=latents,
                                      generator=generators, output_type=output_type, **extra)
        if not req.hires.enabled:
            return images
        if stopped:  # A1111 skips the hires pass of a stopped batch
            return decode_latents(pipe, images, upcast=self.family.is_sdxl)
        return self.hires_pass(pipe, images, seeds, job_no, variation)

    def hires_pass(self, pipe, latents: torch.Tensor, seeds: list[int], job_no: int,
                   variation: NoiseVariation) -> list[Image.Image]:
        req, fix = self.request, self.request.hires
        size = fix.target_size(req.width, req.height)
        if hr.is_latent_upscaler(fix.upscaler):
            image = hr.upscale_latents(latents, size, fix.upscaler, pipe.vae_scale_factor)
        else:
            image = hr.upscale_images(decode_latents(pipe, latents, upcast=self.family.is_sdxl),
                                      size, fix.upscaler, self.extras, should_stop=lambda: self.job.interrupted)
        if self.hires_steps == 0:  # strength too low for a single step: the upscale is the result
            return decode_latents(pipe, image, upcast=self.family.is_sdxl) if torch.is_tensor(image) else image
        extra = {}
        if self.inpainting_model:  # the second pass of an inpainting model also runs fully masked, on pixels
            if torch.is_tensor(image):
                image = decode_latents(pipe, image, upcast=self.family.is_sdxl)
            extra = {"mask_image": [Image.new("L", size, 255)] * len(seeds), "width": size[0], "height": size[1]}
        cls = inpaint_class(self.loaded.pipe) if self.inpainting_model else img2img_class(self.loaded.pipe)
        # Units act again, maps at this size; the pass's noise is varied as A1111 varies it.
        img2img = self.pipeline(cls, len(seeds), size=size, stage="hires", variation=variation)
        text = f"Batch {job_no + 1} of {req.n_iter}, hires fix"
        images, _ = self.sample(img2img, self.hires_steps, job_no, text, len(seeds), **extra, image=image,
                                strength=fix.denoising_strength, num_inference_steps=fix.steps or req.steps,
                                generator=self.generators(seeds), output_type="pil",
                                schedule_steps=fix.steps or req.steps, pass_size=size)
        return images

    # --- infotext ---
    def extra_params(self) -> dict[str, object]:
        hires = self.request.hires
        if not hires.enabled:
            return {}
        return {"Denoising strength": hires.denoising_strength, **hr.infotext_params(hires)}


def run_txt2img(loaded: LoadedCheckpoint, request: Txt2ImgRequest, job: JobControl, *, device_settings,
                prompt: str, negative_prompt: str, **networks) -> GenerationOutput:
    """Generate request.n_iter batches of request.batch_size images.

    `prompt`/`negative_prompt` are the final texts (styles already applied).
    The caller calls `job.finish()`.
    """
    check_can_sample(loaded, request, "text-to-image", networks.get("extras"), networks.get("samplers"))
    if request.hires.enabled and not hr.is_latent_upscaler(request.hires.upscaler):
        hr.check_pixel_upscaler(request.hires.upscaler, networks.get("extras"))

    run = _Txt2ImgRun(loaded, request, job, device_settings, prompt, negative_prompt, **networks)
    return run_batches(run, job)
