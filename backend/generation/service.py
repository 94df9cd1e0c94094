"""The one entry point the UI and the API call to generate images.

It picks the checkpoint, applies styles, waits for the job's turn in the
device queue (one job on the device at a time, owners served in turn), saves
the images and builds A1111's `info`.
"""
from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from backend.control.library import ControlLibrary
from backend.control.saving import save_control_maps
from backend.devices import is_out_of_memory, release_cached_memory
from backend.extensions.api import Hooks
from backend.extensions.scripts import BUILTIN_SCRIPTS, StudioScriptRun, UnknownScriptError, save_grid_image
from backend.extensions.specs import Script
from backend.generation.img2img import run_img2img
from backend.generation.job import JobControl
from backend.generation.queue import DeviceQueue, InterruptedWhileQueued
from backend.generation.request import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from backend.generation.result import GenerationResult
from backend.generation.samplers import BUILTIN_SAMPLERS, SamplerCatalog
from backend.generation.sampling import VERSION, GenerationOutput, resolve_seed
from backend.generation.tiling import seamless_tiling
from backend.generation.txt2img import run_txt2img
from backend.images.saving import FilenameTags, date_subdir, save_image
from backend.models.errors import UnknownCheckpointError
from backend.models.types import LoadedCheckpoint
from backend.networks.library import Activation, NetworkLibrary
from backend.previews.library import JobPreviews, PreviewDecoders
from backend.prompts.length import PromptLimit
from backend.sdxl.handover import RefinerPlan, check_refiner

if TYPE_CHECKING:
    from backend.extras.in_generation import GenerationExtras

def refiner_parts(refiner: LoadedCheckpoint | None) -> tuple:
    """The refiner's modules seamless tiling pads too."""
    return (refiner.pipe.unet, refiner.pipe.vae) if refiner is not None else ()


class GenerationOutOfMemory(RuntimeError):
    """The device ran out of memory during one job; the studio and the next job are fine."""


# Infotext entries that A1111 keeps in `extra_generation_params` rather than as fields of its own.
_BASE_PARAMS = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Face restoration", "Size", "Model hash",
                "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Seed resize from",
                "Clip skip", "Tiling", "Version"}


class GenerationService:
    def __init__(self, manager, options_store, styles, device_settings, *, root: Path | None = None,
                 networks: NetworkLibrary | None = None, control: ControlLibrary | None = None,
                 extras: GenerationExtras | None = None, hooks: Hooks | None = None,
                 samplers: SamplerCatalog | None = None, previews: PreviewDecoders | None = None):
        self.manager = manager
        self.previews = previews  # the models of models/VAE-approx (TAESD, Approx NN)
        self.hooks = hooks or Hooks()  # extensions' prompt transformers and before / after job hooks
        self.samplers = samplers or BUILTIN_SAMPLERS  # the built-in table and the extensions' samplers
        self.prompt_limit = PromptLimit(lambda: options_store.options.prompt_max_chunks)
        self.extras = extras  # model upscalers for hires. fix and "Restore faces"
        self.networks = networks
        self.control = control
        self.options_store = options_store
        self.styles = styles
        self.device_settings = device_settings
        self.root = Path(root) if root is not None else Path.cwd()  # relative output folders live here
        self.queue = DeviceQueue(manager.device_lock)

    def txt2img(self, request: Txt2ImgRequest, job: JobControl | None = None) -> GenerationResult:
        return self._job(request, job)

    def img2img(self, request: Img2ImgRequest, job: JobControl | None = None) -> GenerationResult:
        """img2img, inpaint or outpaint, whichever the request's fields ask for."""
        return self._job(request, job)

    @property
    def request_context(self) -> dict:
        """What requests are validated against here: `Txt2ImgRequest.model_validate(data, context=...)`."""
        return {"samplers": self.samplers, "prompt_limit": self.prompt_limit}

    # --- scripts (the Script dropdown, the API's script_name) ---
    def scripts(self, kind: str | None = None) -> list[Script]:
        """The studio's own scripts, then the extensions'; with `kind`, those that serve txt2img / img2img."""
        found = [*BUILTIN_SCRIPTS, *(script for _, script in self.hooks.scripts)]
        return [s for s in found if kind is None or s.serves(kind)]

    def find_script(self, title: str, kind: str) -> Script:
        wanted = title.strip().lower()
        for script in self.scripts(kind):
            if script.title.lower() == wanted:
                return script
        known = ", ".join(s.title for s in self.scripts(kind)) or "none"
        raise UnknownScriptError(f"{kind} has no script {title!r}; there are: {known}")

    def _job(self, request: GenerationRequest, job: JobControl | None) -> GenerationResult:
        job = job or JobControl()
        if not request.script_name:
            return self.generate_part(request, job, finish=True)
        kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        script = self.find_script(request.script_name, kind)
        plain = request.model_copy(update={"script_name": None, "script_args": {}})
        try:
            result = script.run(StudioScriptRun(self, kind, job), plain, dict(request.script_args))
        finally:
            job.finish()
        if not isinstance(result, GenerationResult):
            raise TypeError(f"script {script.title!r} answered {type(result).__name__}, not a result")
        return result

    def generate_part(self, request: GenerationRequest, job: JobControl, finish: bool = False) -> GenerationResult:
        """One job, as the UI and the API run it; a script runs its parts through here with finish=False."""
        if isinstance(request, Img2ImgRequest):
            return self._generate(request, job, run_img2img, "outdir_img2img_samples", finish)
        return self._generate(request, job, run_txt2img, "outdir_txt2img_samples", finish)

    def save_grid(self, image: Image.Image, infotext: str, kind: str) -> Path | None:
        """A script's grid, where A1111 saves grids (outdir_txt2img_grids / outdir_img2img_grids)."""
        options = self.options_store.options
        kept = self.options_store.extra_options
        if not kept.get("grid_save", True):
            return None
        folder = options.outdir_txt2img_grids if kind == "txt2img" else \
            kept.get("outdir_img2img_grids") or "outputs/img2img-grids"
        directory = Path(folder) if Path(folder).is_absolute() else self.root / folder
        if kept.get("grid_save_to_dirs", True):
            directory = date_subdir(directory)
        return save_grid_image(image, infotext, directory, str(kept.get("grid_format") or "png"))

    def _generate(self, request: GenerationRequest, job: JobControl | None, runner, outdir_option: str,
                  finish: bool = True) -> GenerationResult:
        job = job or JobControl()
        options = self.options_store.options
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        prompt, negative, hook_warnings = self.hooks.transform_prompts(prompt, negative, request)
        image_prompts = None
        if self.hooks.prompt_expanders:  # per-picture prompts need the seeds now, as the runner will use them
            request = request.model_copy(update={"seed": resolve_seed(request.seed)})
            seeds = [request.seed + k for k in range(request.n_iter * request.batch_size)]
            prompts, negatives, expand_warnings = self.hooks.expand_prompts(prompt, negative, seeds, request)
            hook_warnings += expand_warnings
            image_prompts = {s: (p, n) for s, p, n in zip(seeds, prompts, negatives)}
        # The texts the encoder will get (styles, extensions' changes): a long one never waits for the device.
        for text, what in [(prompt, "prompt"), (negative, "negative prompt"),
                           *((t, "prompt") for pair in (image_prompts or {}).values() for t in pair)]:
            self.prompt_limit.check(text, what)
        hook_warnings += self.hooks.run("before_job", request)
        job.preview_every_n_steps = options.show_progress_every_n_steps if options.live_previews_enable else 0
        started = datetime.now()
        try:
            def on_device():
                loaded, refiner = self._load(request, options)
                activation = self.networks.activate(loaded, prompt, negative, request.vae or options.sd_vae) \
                    if self.networks else Activation()
                plan = self._control_plan(loaded, request)
                tiled = (loaded.pipe.unet, loaded.pipe.vae, activation.vae, *refiner_parts(refiner))
                compiler = self.manager.compiler  # --compile: a first job at a new size says it is compiling
                reporting = compiler.reporting(job.set_text) if compiler is not None else contextlib.nullcontext()
                try:
                    with seamless_tiling(tiled, enabled=request.tiling), reporting:  # this job only
                        output = runner(loaded, request, job, device_settings=self.device_settings,
                                        prompt=prompt, negative_prompt=negative, control=plan, extras=self.extras,
                                        hooks=self.hooks, image_prompts=image_prompts, samplers=self.samplers,
                                        previews=JobPreviews(self.previews, options.show_progress_type,
                                                             options.sd_vae_decode_method),
                                        refiner=self._refiner_plan(refiner, request,
                                                                   self.options_store.extra_options),
                                        **activation.runner_kwargs(self.networks.embeddings if self.networks else None))
                finally:
                    if plan is not None:
                        plan.close()  # the UNet as before the job, whatever happened
                return loaded, activation, output

            loaded, activation, output = self.queue.run(job, on_device)  # waits while others' jobs run
            directory = self.output_dir(getattr(options, outdir_option), options)
            paths = self._save(output, request, loaded, prompt, negative, options, started, directory) \
                if request.save_images else []
            if output.control_maps and options.control_net_detectmap_autosaving and request.save_images:
                save_control_maps(output.control_maps, self.output_dir(options.control_net_detectedmap_dir, options),
                                  started)
        except InterruptedWhileQueued:
            return GenerationResult(images=[], infotexts=[], seeds=[], interrupted=True)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            release_cached_memory()  # the next job starts with the memory this one held
            raise GenerationOutOfMemory(
                f"out of memory on {self.device_settings.device} at {request.width}x{request.height}, batch size "
                f"{request.batch_size}: try a smaller size or batch, or start with --medvram / --lowvram") from err
        finally:
            if finish:
                job.finish()
        result = GenerationResult(
            images=output.images, infotexts=output.infotexts, seeds=output.seeds, paths=paths,
            info=self._info(output, request, loaded, prompt, negative, started, self.extras),
            interrupted=output.interrupted, warnings=hook_warnings + activation.warnings + output.warnings,
            control_maps=[] if options.control_net_no_detectmap else list(output.control_maps),
        )
        result.warnings += self.hooks.run("after_job", request, result)
        return result

    def _control_plan(self, loaded: LoadedCheckpoint, request: GenerationRequest):
        if not any(unit.used for unit in request.controlnet_units):
            return None
        if self.control is None:
            raise ValueError("ControlNet is not available in this studio")
        return self.control.prepare(loaded, request.controlnet_units, request.cfg_scale,
                                    has_init_image=isinstance(request, Img2ImgRequest))

    # --- helpers ---
    def _load(self, request: GenerationRequest, options) -> tuple[LoadedCheckpoint, LoadedCheckpoint | None]:
        """The job's checkpoint, and its refiner when the request names one other than the checkpoint itself."""
        name = self._checkpoint_name(request, options)
        if not request.refiner.enabled:
            return self.manager.load(name), None
        if self.manager.find(request.refiner.checkpoint).path.resolve() == self.manager.find(name).path.resolve():
            return self.manager.load(name), None  # as A1111: a model refining itself switches nothing
        loaded, refiner = self.manager.load_with_refiner(name, request.refiner.checkpoint)
        check_refiner(loaded, refiner)
        return loaded, refiner

    @staticmethod
    def _refiner_plan(refiner: LoadedCheckpoint | None, request: GenerationRequest,
                      kept: dict[str, Any]) -> RefinerPlan | None:
        """The refiner and A1111's settings for it (kept, as A1111 stores them, among the extra options)."""
        if refiner is None:
            return None
        return RefinerPlan(loaded=refiner, switch_at=request.refiner.switch_at,
                           by_steps=bool(kept.get("refiner_switch_by_sample_steps", False)),
                           aesthetic_score=float(kept.get("sdxl_refiner_high_aesthetic_score", 6.0)),
                           negative_aesthetic_score=float(kept.get("sdxl_refiner_low_aesthetic_score", 2.5)),
                           hires_pass=str(kept.get("hires_fix_refiner_pass", "second pass")))

    def _checkpoint_name(self, request: GenerationRequest, options) -> str:
        name = request.checkpoint or options.sd_model_checkpoint
        if name:
            return name
        default = self.manager.default_checkpoint()
        if default is None:
            raise UnknownCheckpointError("no checkpoint found: put a .safetensors model in models/Stable-diffusion")
        return default.name

    def output_dir(self, folder: str, options) -> Path:
        directory = Path(folder)
        if not directory.is_absolute():
            directory = self.root / directory
        return date_subdir(directory) if options.save_to_dirs else directory

    @staticmethod
    def _save(output: GenerationOutput, request: GenerationRequest, loaded: LoadedCheckpoint, prompt: str,
              negative: str, options, started: datetime, directory: Path) -> list[Path]:
        paths = []
        for index, (image, infotext, seed) in enumerate(zip(output.images, output.infotexts, output.seeds)):
            tags = FilenameTags(
                seed=seed, prompt=prompt, prompt_no_styles=request.prompt, negative_prompt=negative,
                model_name=loaded.info.model_name, model_hash=loaded.info.shorthash or "",
                sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps,
                cfg=request.cfg_scale, width=image.width, height=image.height, job_timestamp=started,
                batch_number=index % request.batch_size, styles=list(request.styles),
            )
            paths.append(save_image(image, directory, infotext=infotext, fmt=options.samples_format,
                                    filename_pattern=options.samples_filename_pattern, tags=tags,
                                    jpeg_quality=options.jpeg_quality))
        return paths

    @staticmethod
    def _info(output: GenerationOutput, request: GenerationRequest, loaded: LoadedCheckpoint, prompt: str,
              negative: str, started: datetime, extras: GenerationExtras | None = None) -> dict[str, Any]:
        count = len(output.images)
        first = output.params[0] if output.params else {}
        extra = {k: v for k, v in first.items() if k not in _BASE_PARAMS}
        # As A1111: `prompt` as typed, `all_prompts` with the styles applied.
        return {
            "prompt": request.prompt,
            "all_prompts": list(output.prompts) or [prompt] * count,
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": list(output.negative_prompts) or [negative] * count,
            "seed": output.seeds[0] if output.seeds else request.seed,
            "all_seeds": list(output.seeds),
            "subseed": output.subseeds[0] if output.subseeds else request.subseed,
            "all_subseeds": list(output.subseeds),
            "subseed_strength": request.subseed_strength,
            "width": request.width,
            "height": request.height,
            "sampler_name": request.sampler_name,
            "scheduler": request.scheduler,
            "cfg_scale": request.cfg_scale,
            "steps": request.steps,
            "batch_size": request.batch_size,
            "n_iter": request.n_iter,
            "restore_faces": request.restore_faces,
            "face_restoration_model": extras.face_restorer(request) if request.restore_faces and extras else None,
            "sd_model_name": loaded.info.model_name,
            "sd_model_hash": loaded.info.shorthash,
            "sd_vae_name": first.get("VAE"),
            "sd_vae_hash": first.get("VAE hash"),
            "seed_resize_from_w": request.seed_resize_from_w or -1,
            "seed_resize_from_h": request.seed_resize_from_h or -1,
            "denoising_strength": _denoising_strength(request),
            "extra_generation_params": extra,
            "index_of_first_image": 0,
            "infotexts": list(output.infotexts),
            "styles": list(request.styles),
            "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
            "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": loaded.variant.inpainting,
            "version": VERSION,
        }


def _denoising_strength(request: GenerationRequest) -> float | None:
    if isinstance(request, Img2ImgRequest):
        return request.denoising_strength
    if isinstance(request, Txt2ImgRequest) and request.hires.enabled:
        return request.hires.denoising_strength
    return None
