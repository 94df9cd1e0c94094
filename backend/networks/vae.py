"""VAE files (models/VAE, and `<checkpoint>.vae.safetensors` beside a checkpoint), chosen per request.

    Automatic  the VAE beside the checkpoint when there is one, else the one baked into it
    None       always the baked-in VAE
    <file>     that file, e.g. "vae-ft-mse-840000-ema-pruned.safetensors"

A chosen VAE is loaded once per (file, checkpoint family, dtype) and kept; a
request that uses it gets pipelines made with it instead of the baked-in
one, so the checkpoint is never reloaded and other requests are untouched.
Files in the original layout (`encoder.down.0...`, with or without
`first_stage_model.`) and diffusers' layout (`encoder.down_blocks...`) load.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from backend.models import architecture as arch
from backend.models.errors import CheckpointLoadError
from backend.models.loader import assemble
from backend.models.safe_load import read_state_dict
from backend.models.types import LoadedCheckpoint
from backend.models.vae_precision import OwnPrecisionVae

VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin")
AUTOMATIC, NONE = "Automatic", "None"


class VaeError(ValueError):
    pass


@dataclass(frozen=True)
class VaeFile:
    name: str  # file name, as A1111 lists it
    path: Path


def sidecar_vae(checkpoint: Path) -> Path | None:
    """`model.vae.safetensors` (or .pt/.ckpt) beside `model.safetensors`, as A1111's Automatic finds it."""
    for ext in (".safetensors", ".pt", ".ckpt"):
        candidate = checkpoint.with_name(checkpoint.stem + ".vae" + ext)
        if candidate.is_file():
            return candidate
    return None


def read_vae(path: Path, loaded: LoadedCheckpoint) -> AutoencoderKL:
    """An AutoencoderKL from a VAE file, configured for the checkpoint's family (its scaling factor)."""
    sd, _ = read_state_dict(path)
    if any(k.startswith("first_stage_model.") for k in sd):
        sd = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
    dtype = loaded.pipe.vae.dtype
    try:
        if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:  # diffusers layout
            vae = OwnPrecisionVae.from_config(loaded.pipe.vae.config)
            vae.load_state_dict(sd, strict=True)
            vae = vae.to(dtype).eval()
        elif "encoder.down.0.block.0.conv1.weight" in sd:
            config = arch.vae_config(sd, loaded.variant, prefix="")
            vae = assemble(OwnPrecisionVae, config, convert_ldm_vae_checkpoint(sd, config), dtype)
        else:
            raise VaeError(f"{path.name}: not a VAE (no encoder.down weights)")
    except (RuntimeError, KeyError, ValueError) as exc:
        if isinstance(exc, VaeError):
            raise
        raise VaeError(f"{path.name}: does not fit {loaded.info.name}'s VAE ({str(exc).splitlines()[0][:200]})") from None
    if vae.config.latent_channels != loaded.pipe.vae.config.latent_channels:
        raise VaeError(f"{path.name}: {vae.config.latent_channels} latent channels; "
                       f"{loaded.info.name} needs {loaded.pipe.vae.config.latent_channels}")
    vae = vae.to(loaded.pipe.vae.device)
    if loaded.pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
        vae.to(memory_format=torch.channels_last)  # the layout the checkpoint's own VAE was given (a bf16 CPU)
    return vae


class VaeStore:
    def __init__(self, folders: list[Path], cache_size: int = 2):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._files: list[VaeFile] = []
        self._loaded: OrderedDict[tuple, AutoencoderKL] = OrderedDict()
        self._cache_size = cache_size
        self.refresh()

    def refresh(self) -> list[VaeFile]:
        files = []
        for root in self.folders:
            if root.is_dir():
                files += [VaeFile(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*"))
                          if p.is_file() and p.suffix.lower() in VAE_EXTENSIONS]
        with self._lock:
            self._files = files
            self._loaded.clear()
        return list(files)

    def files(self) -> list[VaeFile]:
        with self._lock:
            return list(self._files)

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE, *(f.name for f in self.files())]

    def resolve(self, choice: str, loaded: LoadedCheckpoint) -> Path | None:
        """The file a choice means for this checkpoint; None = the baked-in VAE."""
        choice = (choice or AUTOMATIC).strip()
        if choice == NONE:
            return None
        if choice == AUTOMATIC:
            return sidecar_vae(loaded.info.path) if loaded.info.path.is_file() else None
        for f in self.files():
            if choice in (f.name, Path(f.name).stem, f.path.name):
                return f.path
        raise VaeError(f"no VAE named {choice!r} in {', '.join(map(str, self.folders))}; press refresh if you "
                       "just added it")

    def vae_for(self, choice: str, loaded: LoadedCheckpoint) -> tuple[AutoencoderKL | None, Path | None]:
        """(the VAE to use instead of the baked-in one, its file), or (None, None) for the baked-in one."""
        path = self.resolve(choice, loaded)
        if path is None:
            return None, None
        key = (path.resolve(), path.stat().st_mtime, loaded.variant.family, loaded.pipe.vae.dtype)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key], path
        try:
            vae = read_vae(path, loaded)
        except CheckpointLoadError as exc:
            raise VaeError(str(exc)) from None
        with self._lock:
            self._loaded[key] = vae
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
        return vae, path
