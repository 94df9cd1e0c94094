"""The IP-Adapter library: which adapters and encoders exist, caches of what was loaded, `attach`.

Caches are per library object (the app context owns one), never module globals:
adapter state dicts and encoders are kept LRU (`cache_size` each), image
embeddings per (encoder, image pixels) so a reference image is encoded once.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from backend.control.ip_adapter.attach import AttachedAdapters, check_fit, ensure_attachable, put_on
from backend.control.ip_adapter.encoder import LRU, ImageEncoder, encoder_key, image_digest, load_encoder
from backend.control.ip_adapter.files import read_adapter, scan_adapters, scan_encoders
from backend.control.ip_adapter.types import EncoderInfo, IpAdapterError, IpAdapterInfo, IpAdapterUse
from backend.models.errors import CheckpointLoadError
from backend.models.types import ModelFamily

# Which CLIP tower gives which width: (projected embeddings, penultimate hidden states).
_TOWERS = {
    False: {768: "ViT-L/14", 1024: "ViT-H/14, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
            1280: "ViT-bigG/14, e.g. CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"},
    True: {1024: "ViT-L/14", 1280: "ViT-H/14, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
           1664: "ViT-bigG/14, e.g. CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"},
}
EMBEDDING_CACHE_SIZE = 64


class IpAdapterLibrary:
    def __init__(self, adapter_dirs: list[Path], clip_vision_dirs: list[Path], device="cpu",
                 dtype: torch.dtype = torch.float32, cache_size: int = 2):
        self.adapter_dirs = [Path(d) for d in adapter_dirs]
        self.clip_vision_dirs = [Path(d) for d in clip_vision_dirs]
        self.device, self.dtype = torch.device(device), dtype
        self._lock = threading.RLock()  # scans from the UI thread may meet a job's attach
        self._adapters: list[IpAdapterInfo] | None = None
        self._encoders: list[EncoderInfo] = []
        self._known_adapters: dict = {}
        self._known_encoders: dict = {}
        self._states = LRU(cache_size)
        self._loaded_encoders = LRU(cache_size)
        self._embeddings = LRU(EMBEDDING_CACHE_SIZE)

    @property
    def cache_size(self) -> int:
        return self._states.size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        with self._lock:
            for cache in (self._states, self._loaded_encoders):
                cache.resize(size)

    def unload(self) -> None:
        """Forget every loaded adapter, encoder and embedding (the files stay listed)."""
        with self._lock:
            for cache in (self._states, self._loaded_encoders, self._embeddings):
                cache.clear()

    # ------------------------------------------------------------------ listing

    def refresh(self) -> list[IpAdapterInfo]:
        with self._lock:
            self._adapters = scan_adapters(self.adapter_dirs, self._known_adapters)
            self._encoders = scan_encoders(self.clip_vision_dirs, self._known_encoders)
            return list(self._adapters)

    def files(self) -> list[IpAdapterInfo]:
        with self._lock:
            return list(self._adapters) if self._adapters is not None else self.refresh()

    def encoders(self) -> list[EncoderInfo]:
        with self._lock:
            if self._adapters is None:
                self.refresh()
            return list(self._encoders)

    def find(self, name: str) -> IpAdapterInfo:
        """By title "name [hash]", file name, name without extension, or a stale/short hash, as A1111 accepts."""
        wanted = name.strip()
        entries = self.files()
        for match in (
            lambda e: e.title == wanted,
            lambda e: e.name == wanted,
            lambda e: e.model_name == wanted,
            lambda e: e.path.name == wanted or e.path.stem == wanted,
            lambda e: e.title.split(" [")[0] == wanted.split(" [")[0],  # the name with an outdated hash
            lambda e: bool(e.shorthash) and wanted.lower() == e.shorthash,
        ):
            if found := [e for e in entries if match(e)]:
                return found[0]
        folders = ", ".join(str(d) for d in self.adapter_dirs)
        raise IpAdapterError(f"unknown IP-Adapter {name!r}; press refresh or put the file in {folders}")

    def find_encoder(self, adapter: IpAdapterInfo, wanted: str | None = None) -> EncoderInfo:
        """The clip_vision entry whose width fits `adapter` (or the one named, if it fits)."""
        entries = self.encoders()
        if wanted:
            named = [e for e in entries if wanted in (e.name, Path(e.name).stem)]
            if not named:
                raise IpAdapterError(f"unknown CLIP image encoder {wanted!r} in {self._clip_folder()}")
            entries = named
        fitting = [e for e in entries if not e.error and e.width_for(adapter) == adapter.embed_dim]
        if fitting:
            return fitting[0]
        what = "hidden states" if adapter.uses_hidden_states else "image embeddings"
        tower = _TOWERS[adapter.uses_hidden_states].get(adapter.embed_dim, "")
        present = "; ".join(f"{e.name}: {e.error}" if e.error else f"{e.name}: {e.width_for(adapter)}"
                            for e in entries) or "none"
        raise IpAdapterError(
            f"IP-Adapter {adapter.title} needs a CLIP image encoder with {adapter.embed_dim}-wide {what}"
            f"{f' ({tower})' if tower else ''}; put one in {self._clip_folder()} (found there: {present})")

    def _clip_folder(self) -> str:
        return str(self.clip_vision_dirs[0]) if self.clip_vision_dirs else "models/clip_vision"

    # ------------------------------------------------------------------ loading (cached)

    def _state(self, info: IpAdapterInfo, device, dtype) -> dict:
        stat = info.path.stat()

        def load():
            state = read_adapter(info.path)
            return {part: {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
                    for part, tensors in state.items()}

        return self._states.get((str(info.path.resolve()), stat.st_size, stat.st_mtime, str(device), dtype), load)

    def _encoder(self, info: EncoderInfo) -> ImageEncoder:
        key = (encoder_key(info), str(self.device), self.dtype)
        return self._loaded_encoders.get(key, lambda: ImageEncoder(info, load_encoder(info, self.device, self.dtype)))

    def _embed(self, encoder: ImageEncoder, hidden: bool, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative, positive) for one unit. Several reference images are averaged into one embedding,
        so the adapter sees one image's worth of tokens however many pictures the user gave."""
        each = [self._embeddings.get((encoder.key, hidden, image_digest(image)),
                                     lambda image=image: encoder.encode(encoder.pixels(image), hidden))
                for image in images]
        positive = torch.cat(each).mean(dim=0, keepdim=True)
        negative = self._embeddings.get((encoder.key, hidden, "negative"), lambda: encoder.negative(hidden))
        return negative, positive

    # ------------------------------------------------------------------ attach

    def attach(self, pipe, units: list[IpAdapterUse], family: ModelFamily | None = None) -> AttachedAdapters:
        """Put `units`' adapters on `pipe.unet` (call under the device lock; `restore()` when the job ends).

        Everything that can fail (unknown names, encoder pairing, model fit, reading files, encoding the
        images) happens before the UNet is touched. `pipe` is the job's derived pipeline; its UNet is shared.
        """
        if not units:
            raise IpAdapterError("no IP-Adapter units given")
        unet = pipe.unet
        ensure_attachable(unet)
        param = next(unet.parameters())
        with self._lock:
            infos, states, embeds = [], [], []
            for unit in units:
                info = self.find(unit.name)
                if info.error:
                    raise IpAdapterError(f"IP-Adapter {info.name}: {info.error}")
                if not unit.images:
                    raise IpAdapterError(f"IP-Adapter {info.title}: give at least one reference image")
                if not 0.0 <= unit.start <= unit.end <= 1.0:
                    raise IpAdapterError(f"IP-Adapter {info.title}: need 0 <= start <= end <= 1 "
                                         f"(got {unit.start}..{unit.end})")
                try:
                    state = self._state(info, param.device, param.dtype)
                    check_fit(unet, info, state, family)  # the model's family first, then the encoder
                    encoder = self._encoder(self.find_encoder(info, unit.encoder))
                except CheckpointLoadError as exc:
                    raise IpAdapterError(str(exc)) from None
                infos.append(info)
                states.append(state)
                embeds.append(self._embed(encoder, info.uses_hidden_states, unit.images))
        attached = AttachedAdapters(pipe, put_on(unet, states), units, infos, embeds)
        try:
            attached.apply_step(pipe, 0.0)
        except Exception:
            attached.restore()
            raise
        return attached
