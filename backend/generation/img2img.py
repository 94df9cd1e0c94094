"""img2img, inpaint and outpaint the way A1111 does them, on diffusers' inpaint pipelines.

Every mode runs the inpaint pipeline of the loaded family: with a mask it
inpaints, without one the mask is all white, which is plain img2img (a
4-channel UNet then keeps nothing of the input but the start latents; a
9-channel inpainting UNet gets A1111's fully-masked conditioning). The input
latents are made here, not by the pipeline, so "Masked content" and the latent
resize mode can edit them first; they reach the pipeline as its documented
latent `image` input.

The result is pasted over the input through the blurred mask, so pixels the
blurred mask does not reach are the input's own pixels, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from backend.generation.sampling import (
    GenerationOutput,
    SamplingRun,
    check_can_sample,
    inpaint_class,
    run_batches,
)
from backend.generation.sd_upscale import run_sd_upscale
from backend.generation.vae_codec import encode_pixels, images_to_pixels
from backend.generation.variation import NoiseVariation
from backend.images import masking
from backend.images.loading import to_mask
from backend.images.resize import LATENT_RESIZE, resize_image
from backend.models.types import LoadedCheckpoint


class EmptyMaskError(ValueError):
    pass


@dataclass
class PreparedInput:
    """One input picture, ready to sample and to paste back."""

    original: Image.Image  # what the result is pasted over; its size is the output size
    source: Image.Image  # the pixels sampled from, at the processing size (or its own, for latent resize)
    mask: Image.Image  # processing-size mask for the pipeline (blurred; white = change)
    overlay: Image.Image | None  # original-size blurred mask to paste through; None = take the result whole
    paste_box: tuple[int, int, int, int] | None = None  # "Only masked": where the processed crop goes


def _round8(value: int) -> int:
    return max((value + 7) // 8 * 8, 8)


def prepare_input(image: Image.Image, request: Img2ImgRequest) -> PreparedInput:
    """Resize, crop, pad and fill one init image according to the request."""
    req = request
    size = (req.width, req.height)
    if req.outpaint.enabled:
        pad = req.outpaint
        canvas, mask = masking.pad_for_outpaint(image, pad.left, pad.right, pad.up, pad.down,
                                                overlap=max(req.mask_blur * 2, 8))
        blurred = masking.blur_mask(mask, req.mask_blur)
        work = (_round8(canvas.width), _round8(canvas.height))
        source = canvas.resize(work, Image.Resampling.LANCZOS) if work != canvas.size else canvas
        return PreparedInput(original=canvas, source=source, mask=blurred.resize(work), overlay=blurred)

    if req.mask is None:
        if req.resize_mode == LATENT_RESIZE:  # sample at the input's own size, then resize the latents
            own = (_round8(image.width), _round8(image.height))
            source = image.resize(own, Image.Resampling.LANCZOS) if own != image.size else image
        else:
            source = resize_image(image, req.resize_mode, *size)
        return PreparedInput(original=source, source=source, mask=Image.new("L", size, 255), overlay=None)

    mask = to_mask(req.mask, image.size)
    if req.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    if masking.is_empty(mask):
        raise EmptyMaskError("the mask is empty: paint the area to change (white = change, black = keep)"
                             + (" - with 'Inpaint not masked' the mask must not cover everything"
                                if req.inpainting_mask_invert else ""))
    if req.inpaint_full_res:  # "Only masked": render the crop around the mask at width x height
        blurred = masking.blur_mask(mask, req.mask_blur)
        box = masking.match_aspect(masking.crop_region(mask, req.inpaint_full_res_padding), size, image.size)
        source = image.crop(box).resize(size, Image.Resampling.LANCZOS)
        work_mask = blurred.crop(box).resize(size, Image.Resampling.LANCZOS)
        source = _masked_content(source, work_mask, req)
        return PreparedInput(original=image, source=source, mask=work_mask, overlay=blurred, paste_box=box)

    mode = "Just resize" if req.resize_mode == LATENT_RESIZE else req.resize_mode
    original = resize_image(image, mode, *size)
    blurred = masking.blur_mask(resize_image(mask, mode, *size), req.mask_blur)
    return PreparedInput(original=original, source=_masked_content(original, blurred, req),
                         mask=blurred, overlay=blurred)


def _masked_content(source: Image.Image, mask: Image.Image, req: Img2ImgRequest) -> Image.Image:
    return masking.fill_masked(source, mask) if req.inpainting_fill == "fill" else source


def control_source(prepared: PreparedInput) -> Image.Image:
    """What a ControlNet unit without an image of its own reads: the picture as it is sampled.

    The input at the processing size, without "fill"'s blur: the crop around
    the mask for "Only masked", the grown canvas for outpainting.
    """
    if prepared.paste_box is not None:
        return prepared.original.crop(prepared.paste_box).resize(prepared.source.size, Image.Resampling.LANCZOS)
    if prepared.overlay is not None and prepared.original.size == prepared.source.size:
        return prepared.original
    return prepared.source


def finish_image(prepared: PreparedInput, result: Image.Image) -> Image.Image:
    """The output picture: the result pasted over the input through the blurred mask."""
    if prepared.overlay is None:
        return result
    if prepared.paste_box is not None:
        x1, y1, x2, y2 = prepared.paste_box
        placed = prepared.original.copy()
        placed.paste(result.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
        result = placed
    elif result.size != prepared.original.size:
        result = result.resize(prepared.original.size, Image.Resampling.LANCZOS)
    return masking.paste_over(prepared.original, result, prepared.overlay)


class _Img2ImgRun(SamplingRun):
    request: Img2ImgRequest

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs = [prepare_input(image, self.request) for image in self.request.init_images]
        self.work_size = self.inputs[0].mask.size  # the size the pipeline samples at
        self.upcast = self.family.is_sdxl
        self._latents: dict[int, torch.Tensor] = {}
        self._masked_latents: dict[int, torch.Tensor] = {}
        self._control_sources = [control_source(prepared) for prepared in self.inputs]  # made once: maps cache by it

    def size(self) -> tuple[int, int]:
        return self.work_size

    def sampling_steps(self) -> int:
        """Steps the pipeline really runs: int(steps x strength), as diffusers' img2img."""
        return min(int(self.request.steps * self.request.denoising_strength), self.request.steps)

    def steps_per_batch(self) -> int:
        return self.sampling_steps()

    # --- latents ---
    def input_latents(self, pipe, index: int) -> torch.Tensor:
        if index not in self._latents:
            prepared = self.inputs[index]
            latents = encode_pixels(pipe, images_to_pixels(pipe, [prepared.source]), self.upcast)
            width, height = self.work_size
            scale = pipe.vae_scale_factor
            if latents.shape[-2:] != (height // scale, width // scale):  # "Just resize (latent upscale)"
                latents = F.interpolate(latents, size=(height // scale, width // scale), mode="bilinear",
                                        align_corners=False)
            self._latents[index] = latents
        return self._latents[index]

    def masked_image_latents(self, pipe, index: int) -> torch.Tensor:
        """A 9-channel UNet's conditioning: the input with the masked area mid-grey, encoded."""
        if index not in self._masked_latents:
            prepared = self.inputs[index]
            pixels = images_to_pixels(pipe, [prepared.source])
            keep = pipe.mask_processor.preprocess(prepared.mask, height=pixels.shape[-2],
                                                  width=pixels.shape[-1]) < 0.5
            self._masked_latents[index] = encode_pixels(pipe, pixels * keep, self.upcast)
        return self._masked_latents[index]

    def start_latents(self, pipe, seeds: list[int], indices: list[int]) -> torch.Tensor:
        """The batch's input latents with "latent noise"/"latent nothing" applied in the mask."""
        latents = torch.cat([self.input_latents(pipe, i) for i in indices])
        fill = self.request.inpainting_fill
        if self.request.mask is None and not self.request.outpaint.enabled or fill not in ("latent noise", "latent nothing"):
            return latents
        masks = torch.cat([self.latent_mask(pipe, i, latents.shape[-2:]) for i in indices])
        if fill == "latent noise":  # the seed's own noise, as A1111 does
            replacement = torch.cat([torch.randn(latents.shape[1:], generator=g, device=g.device).unsqueeze(0)
                                     for g in self.generators(seeds)]).to(latents.device)
        else:
            replacement = torch.zeros_like(latents)
        return latents * (1 - masks) + replacement * masks

    def latent_mask(self, pipe, index: int, shape) -> torch.Tensor:
        mask = pipe.mask_processor.preprocess(self.inputs[index].mask, height=shape[0] * pipe.vae_scale_factor,
                                              width=shape[1] * pipe.vae_scale_factor)
        return F.interpolate(mask, size=tuple(shape)).round()

    # --- one batch ---
    def batch(self, seeds: list[int], job_no: int, variation: NoiseVariation) -> list[Image.Image]:
        req = self.request
        indices = [(self.image_offset + k) % len(self.inputs) for k in range(len(seeds))]
        if self.sampling_steps() < 1:  # strength 0 (or too low for one step): nothing to denoise
            return [self.inputs[i].original.copy() for i in indices]
        # Below strength 1 the pipeline noises the start latents through its scheduler's add_noise, which
        # the variation then varies; at strength 1 the start is pure noise, given here already varied.
        full = req.denoising_strength >= 1.0
        pipe = self.pipeline(inpaint_class(self.loaded.pipe), len(seeds),
                             control_sources=[self._control_sources[i] for i in indices],
                             variation=None if full else variation)
        latents = self.start_latents(pipe, seeds, indices).to(pipe.unet.dtype)
        if self.inpainting_model:
            masked = torch.cat([self.masked_image_latents(pipe, i) for i in indices]).to(pipe.unet.dtype)
        else:  # unused by a 4-channel UNet, but the pipeline expects latent-sized conditioning
            masked = torch.zeros_like(latents)
        width, height = self.work_size
        generators = self.generators(seeds)
        noise = {}
        if full and variation.active:
            noise["latents"] = variation.apply(torch.cat([
                torch.randn((1, *latents.shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                for g in generators])).to(device=latents.device, dtype=latents.dtype)
        text = f"Batch {job_no + 1} of {req.n_iter}"
        images, _ = self.sample(pipe, self.sampling_steps(), job_no, text, len(seeds), image=latents, **noise,
                                mask_image=[self.inputs[i].mask for i in indices], masked_image_latents=masked,
                                width=width, height=height, strength=req.denoising_strength,
                                num_inference_steps=req.steps, generator=generators,
                                output_type="pil", schedule_steps=req.steps)
        return [finish_image(self.inputs[i], image) for i, image in zip(indices, images)]

    # --- infotext ---
    def extra_params(self) -> dict[str, object]:
        req = self.request
        params: dict[str, object] = {"Denoising strength": req.denoising_strength}
        if req.inpainting:
            params["Mask blur"] = req.mask_blur
            params["Masked content"] = req.inpainting_fill
            if req.inpaint_full_res and not req.outpaint.enabled:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = req.inpaint_full_res_padding
            if req.inpainting_mask_invert:
                params["Mask mode"] = "Inpaint not masked"
        if req.outpaint.enabled:
            pad = req.outpaint
            params["Outpaint"] = f"left {pad.left}, right {pad.right}, up {pad.up}, down {pad.down}"
        if req.resize_mode != "Just resize":
            params["Resize mode"] = req.resize_mode
        return params


def run_img2img(loaded: LoadedCheckpoint, request: Img2ImgRequest, job: JobControl, *, device_settings,
                prompt: str, negative_prompt: str, **networks) -> GenerationOutput:
    """Generate request.n_iter batches of request.batch_size images from the input pictures.

    `prompt`/`negative_prompt` are the final texts (styles already applied).
    The caller calls `job.finish()`.
    """
    check_can_sample(loaded, request, "img2img", networks.get("extras"), networks.get("samplers"))

    def run_plain(req: Img2ImgRequest, job: JobControl) -> GenerationOutput:
        return run_batches(_Img2ImgRun(loaded, req, job, device_settings, prompt, negative_prompt, **networks), job)

    if request.sd_upscale.enabled:
        return run_sd_upscale(loaded, request, job, run_tiles=run_plain, prompt=prompt,
                              negative_prompt=negative_prompt, extras=networks.get("extras"))
    return run_plain(request, job)
