"""The one entry point the UI and the API call to generate images.

It picks the checkpoint, applies styles, runs the job under the device lock
(one job on the device at a time), saves the images and builds A1111's `info`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from backend.generation.txt2img import VERSION, Txt2ImgOutput, run_txt2img
from backend.images.saving import FilenameTags, date_subdir, save_image
from backend.models.errors import UnknownCheckpointError
from backend.models.types import LoadedCheckpoint

# Infotext entries that A1111 keeps in `extra_generation_params` rather than as fields of its own.
_BASE_PARAMS = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
                "Clip skip", "Version"}


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    paths: list[Path] = field(default_factory=list)  # saved files; empty when not saved
    info: dict[str, Any] = field(default_factory=dict)  # A1111's `info` fields
    interrupted: bool = False


class GenerationService:
    def __init__(self, manager, options_store, styles, device_settings, *, root: Path | None = None):
        self.manager = manager
        self.options_store = options_store
        self.styles = styles
        self.device_settings = device_settings
        self.root = Path(root) if root is not None else Path.cwd()  # relative output folders live here

    def txt2img(self, request: Txt2ImgRequest, job: JobControl | None = None) -> GenerationResult:
        job = job or JobControl()
        options = self.options_store.options
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        job.preview_every_n_steps = options.show_progress_every_n_steps if options.live_previews_enable else 0
        started = datetime.now()
        try:
            with self.manager.device_lock:
                loaded = self.manager.load(self._checkpoint_name(request, options))
                output = run_txt2img(loaded, request, job, device_settings=self.device_settings,
                                     prompt=prompt, negative_prompt=negative)
            paths = self._save(output, request, loaded, prompt, negative, options, started) \
                if request.save_images else []
        finally:
            job.finish()
        return GenerationResult(
            images=output.images, infotexts=output.infotexts, seeds=output.seeds, paths=paths,
            info=self._info(output, request, loaded, prompt, negative, started),
            interrupted=output.interrupted,
        )

    # --- helpers ---
    def _checkpoint_name(self, request: Txt2ImgRequest, options) -> str:
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

    def _save(self, output: Txt2ImgOutput, request: Txt2ImgRequest, loaded: LoadedCheckpoint, prompt: str,
              negative: str, options, started: datetime) -> list[Path]:
        directory = self.output_dir(options.outdir_txt2img_samples, options)
        paths = []
        for index, (image, infotext, seed) in enumerate(zip(output.images, output.infotexts, output.seeds)):
            tags = FilenameTags(
                seed=seed, prompt=prompt, prompt_no_styles=request.prompt, negative_prompt=negative,
                model_name=loaded.info.model_name, model_hash=loaded.info.shorthash or "",
                sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps,
                cfg=request.cfg_scale, width=request.width, height=request.height, job_timestamp=started,
                batch_number=index % request.batch_size, styles=list(request.styles),
            )
            paths.append(save_image(image, directory, infotext=infotext, fmt=options.samples_format,
                                    filename_pattern=options.samples_filename_pattern, tags=tags,
                                    jpeg_quality=options.jpeg_quality))
        return paths

    @staticmethod
    def _info(output: Txt2ImgOutput, request: Txt2ImgRequest, loaded: LoadedCheckpoint, prompt: str,
              negative: str, started: datetime) -> dict[str, Any]:
        count = len(output.images)
        first = output.params[0] if output.params else {}
        extra = {k: v for k, v in first.items() if k not in _BASE_PARAMS}
        # As A1111: `prompt` as typed, `all_prompts` with the styles applied.
        return {
            "prompt": request.prompt,
            "all_prompts": [prompt] * count,
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [negative] * count,
            "seed": output.seeds[0] if output.seeds else request.seed,
            "all_seeds": list(output.seeds),
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "subseed_strength": 0,
            "width": request.width,
            "height": request.height,
            "sampler_name": request.sampler_name,
            "scheduler": request.scheduler,
            "cfg_scale": request.cfg_scale,
            "steps": request.steps,
            "batch_size": request.batch_size,
            "n_iter": request.n_iter,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": loaded.info.model_name,
            "sd_model_hash": loaded.info.shorthash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": request.hires.denoising_strength if request.hires.enabled else None,
            "extra_generation_params": extra,
            "index_of_first_image": 0,
            "infotexts": list(output.infotexts),
            "styles": list(request.styles),
            "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
            "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": loaded.variant.inpainting,
            "version": VERSION,
        }
