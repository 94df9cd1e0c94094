"""What every sampling run shares: pipelines per pass, seeds, prompts, progress, the batch loop.

Seeds: seed -1 picks one random 32-bit seed per request; image k of the whole
request (over n_iter batches of batch_size) uses seed + k, and its noise comes
from its own CPU generator seeded with seed + k, so a seed gives the same
picture whatever the batch size or the image's place in the batch. A variation
seed (subseed + k) and the seed resize options vary that noise (variation.py).

Every sampling pass runs on its own pipeline object (built from the loaded
pipeline's components: the weights are shared, not copied) with its own new
scheduler, so concurrent requests never share a scheduler or the pipeline's
per-call state (`_interrupt`, guidance...). `loaded.pipe` itself is never modified.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

from backend.control.plan import ControlPlan
from backend.extensions.specs import ImageToPostprocess, StepInfo
from backend.generation.job import JobControl
from backend.generation.preview import latents_to_preview
from backend.generation.request import GenerationRequest
from backend.generation.samplers import BUILTIN_SAMPLERS, SamplerCatalog
from backend.generation.variation import NoiseVariation, resolve_subseed, with_variation
from backend.images.infotext import format_infotext
from backend.models.types import LoadedCheckpoint, ModelFamily
from backend.networks.embeddings import EmbeddingStore
from backend.previews.library import JobPreviews
from backend.prompts.conditioning import PromptEncoder, StepConditioning
from backend.prompts.extra_networks import strip_tags
from backend.sdxl.handover import HandOverUNet, RefinerConditioning, RefinerPlan

if TYPE_CHECKING:
    from backend.extensions.api import Hooks
    from backend.extras.in_generation import GenerationExtras

VERSION = f"diffusers {diffusers.__version__}"


@dataclass
class GenerationOutput:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)  # each image's variation seed (A1111's all_subseeds)
    infotexts: list[str] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)  # ordered infotext parameters, per image
    interrupted: bool = False
    control_maps: list[Image.Image] = field(default_factory=list)  # the ControlNet maps the job used
    prompts: list[str] = field(default_factory=list)  # each image's prompt and negative prompt, as encoded
    negative_prompts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # extension hooks that failed during sampling


def resolve_seed(seed: int) -> int:
    """-1 means a random 32-bit seed, chosen once per request."""
    return random.randrange(2**32 - 1) if seed == -1 else seed


def derive_pipeline(pipe, pipeline_cls: type, scheduler, vae=None, unet=None):
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
    if vae is not None:  # a VAE the request chose instead of the checkpoint's own
        kwargs["vae"] = vae
    if unet is not None:  # the UNet with this pass's ControlNet units (backend/control/controlled_unet.py)
        kwargs["unet"] = unet
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

    def __init__(self, job: JobControl, family, steps: int, conditioning: StepConditioning | None = None,
                 control: ControlPlan | None = None, run: "SamplingRun | None" = None):
        self.job, self.family, self.steps = job, family, steps
        self.conditioning = conditioning
        self.control = control
        self.run = run  # its extension hooks get each step; their failures become its warnings
        self.stopped = False
        self._last_preview = 0

    def __call__(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        # Second-order samplers call back twice per step: report whole steps.
        done = min(self.steps, (i + 1) * self.steps // max(pipe.num_timesteps, 1))
        self.job.advance(done)
        every = self.job.preview_every_n_steps
        if every > 0 and done and done % every == 0 and done != self._last_preview:
            self._last_preview = done
            latents = callback_kwargs["latents"]
            previews = self.run.previews if self.run is not None else None
            self.job.set_preview(previews.preview(pipe, latents, self.family) if previews is not None
                                 else latents_to_preview(latents, self.family))
        if self.run is not None and self.run.hooks is not None and self.run.hooks.step_callbacks:
            step = StepInfo(latents=callback_kwargs["latents"], step=done, timestep=t, total=self.steps,
                            request=self.run.request)
            self.run.warn(self.run.hooks.run("step_callbacks", step))
        if self.job.should_stop_sampling:
            # diffusers' interrupt: the loop skips the remaining steps, then decodes as usual.
            self.stopped = True
            pipe._interrupt = True
        if self.conditioning is not None and self.conditioning.changes:
            # Prompt editing / alternation: the texts of the next step (whole steps, as A1111 counts them).
            callback_kwargs.update(self.conditioning.for_step(pipe, done))
        if self.control is not None:  # ControlNet start/end and IP-Adapter weights of the next step
            self.control.end_step(pipe, i)
        if isinstance(pipe.unet, HandOverUNet):  # the refiner's switch by steps counts whole steps
            pipe.unet.end_step(done)
        return callback_kwargs


class SamplingRun:
    """One request's sampling: subclasses implement `batch` and `extra_params`."""

    def __init__(self, loaded: LoadedCheckpoint, request: GenerationRequest, job: JobControl,
                 device_settings, prompt: str, negative_prompt: str, embeddings: EmbeddingStore | None = None,
                 network_params: dict[str, object] | None = None, vae=None, vae_params: dict | None = None,
                 control: ControlPlan | None = None, extras: GenerationExtras | None = None,
                 hooks: Hooks | None = None, image_prompts: dict[int, tuple[str, str]] | None = None,
                 samplers: SamplerCatalog | None = None, previews: JobPreviews | None = None,
                 refiner: RefinerPlan | None = None):
        self.loaded, self.request, self.job = loaded, request, job
        # The refiner that takes over the schedule's end (backend/sdxl/handover.py); None: the base alone.
        self.refiner = refiner
        self.refiner_encoder = PromptEncoder(refiner.loaded.pipe, request.clip_skip, embeddings) if refiner else None
        self.handed_over = False  # whether any pass of this job switched to the refiner (infotext)
        self.last_pass_refined = False  # whether the last pass ended on the refiner (its hires pass stays there)
        self.previews = previews  # live preview method and final decode (TAESD drafts); None: Approx cheap
        self.samplers = samplers or BUILTIN_SAMPLERS  # the studio's samplers, extensions' among them
        self.hooks = hooks  # extensions' per-step callbacks and postprocessing
        # Each picture's own (prompt, negative) by its seed (dynamic prompts); None: all use `prompt`.
        self.image_prompts = image_prompts
        self.image_offset = 0  # the place of a pass's first picture in its batch (img2img picks inputs by it)
        self.warnings: list[str] = []
        self.extras = extras  # model upscalers for hires. fix, "Restore faces"; None: PIL resamplers only
        self.family = loaded.variant.family
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.base_prompts = (prompt, negative_prompt)
        self.generator_device = getattr(device_settings, "generator_device", "cpu")
        self.inpainting_model = loaded.pipe.unet.config.in_channels == 9
        self.prompt_encoder = PromptEncoder(loaded.pipe, request.clip_skip, embeddings)
        self.embeddings = {e.name: e for e in embeddings.all()} if embeddings else {}
        self.embeddings_used: set[str] = set()
        self.network_params = network_params or {}  # "Lora hashes", from the networks actually applied
        self.vae, self.vae_params = vae, vae_params or {}  # a chosen VAE ("VAE hash", "VAE") or the baked-in one
        self.control = control if control is not None and control.active else None

    def warn(self, warnings: list[str]) -> None:
        self.warnings += [w for w in warnings if w not in self.warnings]  # once per job, not once per step

    def prompts_for(self, seed: int) -> tuple[str, str]:
        if self.image_prompts and seed in self.image_prompts:
            return self.image_prompts[seed]
        return self.base_prompts

    # --- what subclasses provide ---
    def steps_per_batch(self) -> int:
        return self.request.steps

    def batch(self, seeds: list[int], job_no: int, variation: NoiseVariation) -> list[Image.Image]:
        """The batch's pictures; `variation` says how their noise departs from their seeds' own."""
        raise NotImplementedError

    def extra_params(self) -> dict[str, object]:
        """Infotext entries after Model (Denoising strength, Hires..., Mask blur...)."""
        return {}

    def size(self) -> tuple[int, int]:
        return self.request.width, self.request.height

    # --- building blocks ---
    def pipeline(self, pipeline_cls: type, images: int = 1, size: tuple[int, int] | None = None,
                 control_sources: list[Image.Image | None] | None = None, stage: str = "single",
                 variation: NoiseVariation | None = None):
        """A fresh pipeline of `pipeline_cls` on the loaded weights, this run's VAE and a new scheduler.

        With ControlNet units its UNet is the loaded one wrapped for this pass:
        `images` in the batch, each conditioned on the map made from its unit's
        image or from `control_sources[k]` (img2img's picture), at `size`;
        `stage` says which pass of hires. fix this is ("first", "hires"), if any.
        With an active `variation`, the noise the pipeline adds to its start
        latents (img2img, the hires pass) is varied.
        """
        unet = None
        if self.control is not None:
            scale = self.loaded.pipe.vae_scale_factor
            unet = self.control.unet_for(self.loaded.pipe.unet, control_sources or [None], size or self.size(),
                                         images, scale, stage)
        if self.refiner is not None:
            unet = HandOverUNet(unet or self.loaded.pipe.unet, self.refiner,
                                may_switch=self.refiner.switches_in(stage),
                                switched=stage == "hires" and self.last_pass_refined)
        scheduler = self.scheduler()
        if variation is not None:
            scheduler = with_variation(scheduler, variation)
        pipe = derive_pipeline(self.loaded.pipe, pipeline_cls, scheduler, vae=self.vae, unet=unet)
        if self.control is not None:
            self.control.attach_ip_adapters(pipe, (control_sources or [None])[0])
        return pipe

    def scheduler(self):
        return self.samplers.make_scheduler(self.request.sampler_name, self.request.scheduler,
                                            self.loaded.pipe.scheduler.config, self.loaded.variant.prediction_type)

    def generators(self, seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator(self.generator_device).manual_seed(s) for s in seeds]

    def noise_variation(self, seeds: list[int], subseeds: list[int]) -> NoiseVariation:
        req = self.request
        resize = (req.seed_resize_from_w, req.seed_resize_from_h) \
            if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0 else None
        return NoiseVariation(seeds=seeds, subseeds=subseeds, strength=req.subseed_strength, resize_from=resize,
                              latent_scale=self.loaded.pipe.vae_scale_factor,
                              generator_device=str(self.generator_device))

    def sample(self, pipe, steps: int, job_no: int, text: str, n: int, schedule_steps: int | None = None,
               pass_size: tuple[int, int] | None = None, **kwargs):
        """One pipeline call; returns (images or latents, stopped early).

        `steps` is how many steps this pass runs (for progress); prompt editing
        counts over `schedule_steps` (the pass's nominal steps), as A1111 does.
        `pass_size` (width, height) is the pass's picture size, when the call has no width / height.
        """
        width, height = pass_size or (kwargs.get("width") or self.size()[0], kwargs.get("height") or self.size()[1])
        if self.family.is_sdxl:  # micro-conditioning: the pass's size unless the request set its own
            kwargs.update(self.request.sdxl_conditioning.sizes(width, height))
        if isinstance(pipe.unet, HandOverUNet):  # the refiner's own encoding of this pass's prompts
            pipe.unet.prepare(RefinerConditioning(
                self.refiner, self.refiner_encoder, strip_tags(self.prompt), strip_tags(self.negative_prompt),
                schedule_steps or steps, n, (width, height), self.request.sdxl_conditioning), steps)
        # The infotext keeps the prompt as written; the text encoder gets it without <lora:...> tags.
        conditioning = StepConditioning(self.prompt_encoder, strip_tags(self.prompt), strip_tags(self.negative_prompt),
                                        schedule_steps or steps, n)
        self.embeddings_used.update(conditioning.embeddings_used)
        callback = StepCallback(self.job, self.family, steps, conditioning, self.control, run=self)
        if self.control is not None:
            self.control.start_pass(pipe)
            kwargs.update(self.control.pipeline_kwargs(n))
        # "Decode with TAESD": the pipeline stops at the latents and the tiny decoder makes the pictures.
        taesd = self.previews.final_decoder(self.family) \
            if self.previews is not None and kwargs.get("output_type") == "pil" else None
        if taesd is not None:
            kwargs["output_type"] = "latent"
        self.job.begin_pass(job_no, steps, text)
        try:
            result = pipe(**conditioning.pipeline_kwargs(), guidance_scale=self.request.cfg_scale,
                          callback_on_step_end=callback,
                          callback_on_step_end_tensor_inputs=["latents", *conditioning.callback_inputs()], **kwargs)
        finally:
            self.job.end_pass()
            if self.previews is not None:
                self.warn(self.previews.warnings)
            if isinstance(pipe.unet, HandOverUNet):
                self.last_pass_refined = pipe.unet.switched
                self.handed_over |= pipe.unet.switched
        if taesd is not None:
            return self.previews.decode_final(taesd, result.images), callback.stopped
        return result.images, callback.stopped

    # --- infotext ---
    def params(self, seed: int, subseed: int) -> dict[str, object]:
        req, info = self.request, self.loaded.info
        width, height = self.size()
        params: dict[str, object] = {
            "Steps": req.steps,
            "Sampler": req.sampler_name,
            "Schedule type": self.samplers.scheduler_label(req.sampler_name, req.scheduler),
            "CFG scale": req.cfg_scale,
            "Seed": seed,
            "Face restoration": self.extras.face_restorer(req) if req.restore_faces and self.extras else None,
            "Size": f"{width}x{height}",
            "Model hash": info.shorthash,
            "Model": info.model_name,
            **self.vae_params,
        }
        if req.subseed_strength > 0:
            params["Variation seed"] = subseed
            params["Variation seed strength"] = req.subseed_strength
        if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
            params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
        extra = self.extra_params()
        if "Denoising strength" in extra:  # A1111's order: strength, then Clip skip, then the rest
            params["Denoising strength"] = extra.pop("Denoising strength")
        if req.clip_skip > 1:
            params["Clip skip"] = req.clip_skip
        if req.tiling:
            params["Tiling"] = True
        params.update(extra)
        if self.refiner is not None:
            params.update(self.refiner.infotext_params(self.handed_over, hires=bool(getattr(req, "hires", None)
                                                                                   and req.hires.enabled)))
        if self.family.is_sdxl:
            params.update(self.request.sdxl_conditioning.infotext_params())
        params.update(self.network_params)
        if self.control is not None:
            params.update(self.control.infotext_params())
        if self.embeddings_used:
            params["TI hashes"] = ", ".join(f"{name}: {self.embeddings[name].shorthash}"
                                            for name in sorted(self.embeddings_used))
        params["Version"] = VERSION
        return {k: v for k, v in params.items() if v is not None}


def check_can_sample(loaded: LoadedCheckpoint, request: GenerationRequest, task: str,
                     extras: GenerationExtras | None = None, samplers: SamplerCatalog | None = None) -> None:
    """Refuse, before any work, a model, sampler, upscaler or face restorer this runner cannot use."""
    if request.restore_faces:
        if extras is None:
            raise ValueError("face restoration is not available in this studio")
        extras.check_face_restorer(request)
    if loaded.variant.family is ModelFamily.SDXL_REFINER:
        raise ValueError(f"{loaded.info.name} is an SDXL refiner: choose it as the Refiner of an SDXL checkpoint "
                         "(the Refiner accordion, or the API's refiner_checkpoint), not as the checkpoint")
    if not isinstance(loaded.pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ValueError(f"{loaded.info.name} ({loaded.variant.label}) cannot do {task}")
    channels = loaded.pipe.unet.config.in_channels
    if channels not in (4, 9):
        raise ValueError(f"{loaded.info.name}: a UNet with {channels} input channels cannot do {task}")
    (samplers or BUILTIN_SAMPLERS).make_scheduler(request.sampler_name, request.scheduler, loaded.pipe.scheduler.config)


def _prompt_groups(run: SamplingRun, seeds: list[int]) -> list[tuple[tuple[str, str], list[int]]]:
    """The batch's pictures in runs of one (prompt, negative): each run is one sampling pass."""
    groups: list[tuple[tuple[str, str], list[int]]] = []
    for position, seed in enumerate(seeds):
        texts = run.prompts_for(seed)
        if groups and groups[-1][0] == texts:
            groups[-1][1].append(position)
        else:
            groups.append((texts, [position]))
    return groups


def _postprocess(run: SamplingRun, image: Image.Image, seed: int, params: dict) -> Image.Image:
    """Extensions' postprocess hooks on one picture; their infotext entries go before Version."""
    if run.hooks is None or not run.hooks.postprocess:
        return image
    item = ImageToPostprocess(image=image, seed=seed, prompt=run.prompt, request=run.request)
    run.warn(run.hooks.run("postprocess", item))
    version = params.pop("Version", None)
    params.update({k: v for k, v in item.params.items() if v is not None})
    if version is not None:
        params["Version"] = version
    return item.image


def run_batches(run: SamplingRun, job: JobControl) -> GenerationOutput:
    """request.n_iter batches of request.batch_size images.

    Interrupt keeps the finished batches and the partly denoised current one,
    then stops; skip ends the current batch (its partial images are kept, as in
    A1111) and goes on with the next. Pictures of one batch with different
    prompts (dynamic prompts) are sampled in one pass per prompt. The caller
    calls `job.finish()`.
    """
    request = run.request
    seed = resolve_seed(request.seed)
    subseed = resolve_subseed(request.subseed)
    out = GenerationOutput()
    batches = [[seed + n * request.batch_size + i for i in range(request.batch_size)] for n in range(request.n_iter)]
    groups = [_prompt_groups(run, seeds) for seeds in batches]
    job.begin(request.n_iter, sum(len(g) for g in groups) * run.steps_per_batch())
    for job_no, seeds in enumerate(batches):
        if job.interrupted:
            break
        job.take_skip()  # a skip pressed between batches belongs to none of them
        first = job_no * request.batch_size
        subseeds = [subseed + first + i for i in range(request.batch_size)]  # as A1111: subseed + k
        for (prompt, negative), positions in groups[job_no]:
            run.prompt, run.negative_prompt, run.image_offset = prompt, negative, positions[0]
            part_seeds = [seeds[p] for p in positions]
            part_subseeds = [subseeds[p] for p in positions]
            images = run.batch(part_seeds, job_no, run.noise_variation(part_seeds, part_subseeds))
            if request.restore_faces and run.extras is not None:
                job.text = f"Batch {job_no + 1} of {request.n_iter}, restoring faces"
                images = [run.extras.restore_faces(image, request) for image in images]
            for image, image_seed, image_subseed in zip(images, part_seeds, part_subseeds):
                params = run.params(image_seed, image_subseed)
                image = _postprocess(run, image, image_seed, params)
                out.images.append(image)
                out.seeds.append(image_seed)
                out.subseeds.append(image_subseed)
                out.params.append(params)
                out.prompts.append(prompt)
                out.negative_prompts.append(negative)
                out.infotexts.append(format_infotext(prompt, negative, params))
            if job.interrupted:
                break
        job.take_skip()
    run.prompt, run.negative_prompt = run.base_prompts
    out.interrupted = job.interrupted
    out.warnings = list(run.warnings)
    if run.control is not None:
        out.control_maps = list(run.control.maps_used)
    return out
