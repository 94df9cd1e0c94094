"""The preview and fast-decode models of `models/VAE-approx`, and what one job does with them.

A1111's `show_progress_type` picks how a live preview is made from the latents of a step:
  Full          the checkpoint's VAE (exact; costs a whole decode per preview)
  Approx NN     VAEApprox, `model.pt` / `vaeapprox-sdxl.pt` (twice the latent size)
  Approx cheap  a fixed linear map of the latent channels (backend/generation/preview.py; no file)
  TAESD         the tiny autoencoder's decoder, `taesd_decoder.pth` / `taesdxl_decoder.pth` (full size)
and `sd_vae_decode_method` "TAESD" decodes the finished pictures with TAESD too (fast drafts).
The studio downloads nothing: a missing file is named with its folder, and the job goes on with
Approx cheap (previews) or the full VAE (final decode). A preview never fails a job.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from backend.generation.preview import latents_to_preview
from backend.generation.vae_codec import decode_latents
from backend.models.errors import CheckpointLoadError
from backend.models.types import ModelFamily
from backend.previews.approx_nn import read_vae_approx
from backend.previews.taesd import read_taesd_decoder

log = logging.getLogger(__name__)

PREVIEW_METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")
DECODE_METHODS = ("Full", "TAESD")
MAX_PREVIEW_IMAGES = 8  # pictures of a batch shown side by side
_FILES = {  # (method, SDXL?) -> A1111's file name; a .safetensors of the same stem is read as well
    ("TAESD", False): "taesd_decoder.pth", ("TAESD", True): "taesdxl_decoder.pth",
    ("Approx NN", False): "model.pt", ("Approx NN", True): "vaeapprox-sdxl.pt",
}
_SOURCES = {"TAESD": "github.com/madebyollin/taesd", "Approx NN": "A1111's VAE-approx release"}


class PreviewFileMissing(LookupError):
    pass


class PreviewDecoders:
    """Reads the VAE-approx files once each (safe loader), keeps them on the device."""

    def __init__(self, folders: list[Path], device: torch.device, dtype: torch.dtype, channels_last: bool = False):
        self.folders = [Path(f) for f in folders]
        self.device, self.dtype = device, dtype
        self.channels_last = channels_last  # as the VAE (a bf16 CPU: TAESD measured 5.7x faster at 256 px)
        self._models: dict[Path, nn.Module] = {}
        self._lock = threading.Lock()

    def file_for(self, method: str, family: ModelFamily) -> Path:
        name = _FILES[(method, family.is_sdxl)]
        for folder in self.folders:
            for candidate in (folder / name, folder / f"{Path(name).stem}.safetensors"):
                if candidate.is_file():
                    return candidate
        raise PreviewFileMissing(f"{method} needs {name} in {self.folders[0]} "
                                 f"(from {_SOURCES[method]}); the studio downloads nothing")

    def model(self, method: str, family: ModelFamily) -> nn.Module:
        path = self.file_for(method, family).resolve()
        with self._lock:
            if path not in self._models:
                reader = read_taesd_decoder if method == "TAESD" else read_vae_approx
                log.info("loading the %s preview model %s", method, path.name)
                model = reader(path).to(self.device, self.dtype)
                if self.channels_last:
                    model.to(memory_format=torch.channels_last)
                self._models[path] = model
            return self._models[path]

    def for_job(self, preview_method: str = "Approx cheap", decode_method: str = "Full") -> "JobPreviews":
        return JobPreviews(self, preview_method, decode_method)


def _to_image(pictures: torch.Tensor) -> Image.Image:
    """(B, 3, H, W) in [0, 1] -> one RGB image, the pictures side by side."""
    rgb = (pictures.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return Image.fromarray(np.ascontiguousarray(torch.cat(list(rgb), dim=1).numpy()))


class JobPreviews:
    """One job's preview and final-decode methods; what went wrong is kept as the job's warnings."""

    def __init__(self, decoders: PreviewDecoders | None, preview_method: str, decode_method: str):
        if preview_method not in PREVIEW_METHODS or decode_method not in DECODE_METHODS:
            raise ValueError(f"unknown preview method {preview_method!r} or decode method {decode_method!r}")
        self.decoders, self.method, self.decode_method = decoders, preview_method, decode_method
        self.warnings: list[str] = []

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            log.warning("%s", text)
            self.warnings.append(text)

    def _file_model(self, method: str, family: ModelFamily, final: bool = False) -> nn.Module | None:
        if self.decoders is None:
            return None
        try:
            return self.decoders.model(method, family)
        except (PreviewFileMissing, CheckpointLoadError) as exc:
            what, fallback = ("Decoding with", "the full VAE") if final else ("Live preview:", "Approx cheap previews")
            self._warn(f"{what} {exc}; using {fallback} instead")
            return None

    @torch.no_grad()
    def preview(self, pipe, latents: torch.Tensor, family: ModelFamily) -> Image.Image:
        """The live preview of a step's latents (B, 4, h, w)."""
        latents = latents[:MAX_PREVIEW_IMAGES]
        try:
            if self.method == "Full":
                images = decode_latents(pipe, latents, upcast=family.is_sdxl)
                strip = Image.new("RGB", (sum(i.width for i in images), images[0].height))
                for k, image in enumerate(images):
                    strip.paste(image, (k * images[0].width, 0))
                return strip
            if self.method in ("TAESD", "Approx NN"):
                model = self._file_model(self.method, family)
                if model is not None:
                    out = model(latents.to(self.decoders.device, self.decoders.dtype))
                    return _to_image(out if self.method == "TAESD" else (out + 1) / 2)
        except Exception as exc:  # a preview is a courtesy: the job must go on
            self._warn(f"the {self.method} preview failed ({type(exc).__name__}: {exc}); using Approx cheap")
        return latents_to_preview(latents, family, MAX_PREVIEW_IMAGES)

    def final_decoder(self, family: ModelFamily) -> nn.Module | None:
        """TAESD when the finished pictures are to be decoded by it (and its file is there), else None."""
        return self._file_model("TAESD", family, final=True) if self.decode_method == "TAESD" else None

    @torch.no_grad()
    def decode_final(self, decoder: nn.Module, latents: torch.Tensor) -> list[Image.Image]:
        pictures = decoder(latents.to(self.decoders.device, self.decoders.dtype))
        return [_to_image(p[None]) for p in pictures]
