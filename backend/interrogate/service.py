"""A1111's "Interrogate": a caption for a picture, written into the prompt box, on the studio's device queue.

"clip" is A1111's name for its BLIP caption (it then adds CLIP-ranked artist and
style words from its own lists; only the caption is made here). "deepdanbooru"
needs A1111's hand-written network definition for model-resnet_custom_v3.pt,
which the studio does not have: it is refused with a message, not a 500.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch
from PIL import Image

from backend.devices import is_out_of_memory, release_cached_memory
from backend.generation.job import JobControl
from backend.generation.queue import InterruptedWhileQueued
from backend.interrogate.blip import (
    BlipCaptioner,
    BlipLoadError,
    find_blip_folder,
    load_blip,
    signature,
)

MODELS = ("clip", "deepdanbooru")


class InterrogateError(ValueError):
    """Why no caption came: `status_code` is what the API answers
    (404 no model, 422 bad file, 501 not built, 503 out of memory)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


class InterrogateService:
    def __init__(self, blip_dir: Path, device: torch.device, dtype: torch.dtype, queue, options_store):
        self.blip_dir = Path(blip_dir)
        self.device = device
        self.dtype = dtype if device.type == "cuda" else torch.float32  # half precision is slow or absent on CPUs
        self.queue = queue
        self.options_store = options_store
        self._kept: BlipCaptioner | None = None  # only with interrogate_keep_models_in_memory
        self._lock = threading.Lock()

    def interrogate(self, image: Image.Image, model: str = "clip", job: JobControl | None = None) -> str:
        if model == "deepdanbooru":
            raise InterrogateError("deepdanbooru is not supported in this studio; use model \"clip\" "
                                   f"(a BLIP captioning model in {self.blip_dir})", status_code=501)
        if model != "clip":
            raise InterrogateError(f"unknown interrogate model {model!r}; choose one of: {', '.join(MODELS)}")
        folder = find_blip_folder(self.blip_dir)
        if folder is None:
            raise InterrogateError(
                "no BLIP captioning model: put a transformers BLIP captioning folder (config.json, "
                "model.safetensors, tokenizer and preprocessor files), e.g. Salesforce/blip-image-captioning-base, "
                f"in {self.blip_dir.resolve()}", status_code=404)
        options = self.options_store.options
        job = job or JobControl()

        def on_device() -> str:
            keep = options.interrogate_keep_models_in_memory
            try:
                captioner = self._captioner(folder, keep)
                return captioner.caption(image, num_beams=options.interrogate_clip_num_beams,
                                         min_length=options.interrogate_clip_min_length,
                                         max_length=options.interrogate_clip_max_length)
            finally:
                if not keep:  # the model is dropped: give its GPU memory back for the next generation
                    captioner = None
                    release_cached_memory()

        try:
            return self.queue.run(job, on_device)
        except InterruptedWhileQueued:
            raise InterrogateError("interrupted before its turn", status_code=409) from None
        except BlipLoadError as exc:
            raise InterrogateError(str(exc)) from None
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            self._kept = None
            release_cached_memory()
            raise InterrogateError(f"out of memory on {self.device} while captioning: free memory (a smaller "
                                   "checkpoint, fewer interrogate_clip_num_beams) and try again",
                                   status_code=503) from None
        finally:
            job.finish()

    def _captioner(self, folder: Path, keep: bool) -> BlipCaptioner:
        with self._lock:
            kept = self._kept
            if kept is not None and kept.source == signature(folder):
                return kept
            self._kept = None
            captioner = load_blip(folder, self.device, self.dtype)
            if keep:
                self._kept = captioner
            return captioner
