"""The one owner of model state: the checkpoint list, the loaded pipelines, the device lock.

Created once by launch.py and passed explicitly. A request names its
checkpoint; `load` returns it from the in-memory cache (a hot swap) or reads
it from disk. A file that fails to load raises CheckpointLoadError and
leaves every loaded model as it was: the new model is built completely
before anything is evicted.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from backend.devices import DeviceSettings, release_cached_memory
from backend.models import architecture as arch
from backend.models.compiled import UnetCompiler
from backend.models.errors import CheckpointLoadError, UnknownCheckpointError
from backend.models.hashing import HashCache
from backend.models.loader import load_diffusers_folder, load_single_file, prediction_hint
from backend.models.safe_load import read_safetensors_header, sniff_format
from backend.models.types import CheckpointInfo, LoadedCheckpoint

log = logging.getLogger(__name__)
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class ModelManager:
    def __init__(self, checkpoint_dirs: list[Path], device: DeviceSettings, cache_size: int = 1,
                 hash_cache: HashCache | None = None, builtin: list[Path] | None = None, keep_in_cpu: bool = True):
        self.checkpoint_dirs = [Path(d) for d in checkpoint_dirs]
        self.builtin = [Path(p) for p in builtin or []]  # shipped checkpoints, listed after the user's
        self.device = device
        self.compiler = UnetCompiler(device.compile) if device.compile else None  # --compile
        self.hashes = hash_cache or HashCache(None)
        self.device_lock = threading.RLock()  # one job on the device at a time
        self._lock = threading.RLock()  # guards the list and the cache
        self._cache_size = max(1, cache_size)
        self.keep_in_cpu = keep_in_cpu  # A1111's sd_checkpoints_keep_in_cpu: cached, not current -> RAM
        self._entries: list[CheckpointInfo] = []
        self._loaded: OrderedDict[Path, LoadedCheckpoint] = OrderedDict()  # least recently used first
        self.refresh()

    # ------------------------------------------------------------------ listing

    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the checkpoint folders. Unreadable or foreign files are listed with the reason."""
        entries: dict[Path, CheckpointInfo] = {}
        for root in self.checkpoint_dirs:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if path.is_dir() and (path / "model_index.json").is_file():
                    entries[path.resolve()] = CheckpointInfo(path=path, name=path.relative_to(root).as_posix())
                elif (path.is_file() and path.suffix.lower() in CHECKPOINT_EXTENSIONS and not _inside_diffusers(path, root)
                      and not path.stem.lower().endswith(".vae")):  # model.vae.safetensors is that model's VAE
                    entries[path.resolve()] = self._describe(path, root)
        for path in self.builtin:
            if path.is_file() and path.resolve() not in entries:
                info = self._describe(path, path.parent)
                info.builtin = True
                entries[path.resolve()] = info
        with self._lock:
            for loaded in self._loaded.values():  # keep what loading learnt (hash, variant)
                if (found := entries.get(loaded.info.path.resolve())) and found.error is None:
                    entries[loaded.info.path.resolve()] = loaded.info
            self._entries = sorted(entries.values(), key=lambda e: (e.builtin, e.name.lower()))
            return list(self._entries)

    def _describe(self, path: Path, root: Path) -> CheckpointInfo:
        info = CheckpointInfo(path=path, name=path.relative_to(root).as_posix())
        try:
            info.sha256 = self.hashes.cached(path)
            if sniff_format(path) == "safetensors":  # cheap: shapes from the header, no tensor data read
                shapes, metadata = read_safetensors_header(path)
                info.variant = arch.detect_variant(shapes, prediction_hint(path), arch.resolution_from_metadata(metadata))
        except (CheckpointLoadError, arch.UnsupportedCheckpoint, OSError) as exc:
            info.error = str(exc).removeprefix(f"{path.name}: ")
        return info

    def checkpoints(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._entries)

    def find(self, name: str) -> CheckpointInfo:
        """By title "name [hash]", file name, name without extension, or short hash, as A1111 accepts."""
        wanted = name.strip()
        with self._lock:
            entries = list(self._entries)
        for match in (
            lambda e: e.title == wanted,
            lambda e: e.name == wanted,
            lambda e: e.model_name == wanted,
            lambda e: Path(e.name).name == wanted or Path(e.model_name).name == wanted,
            lambda e: e.title.split(" [")[0] == wanted.split(" [")[0],
            lambda e: bool(e.sha256) and wanted.lower() in (e.sha256[:10], e.sha256[:8], e.sha256),
        ):
            found = [e for e in entries if match(e)]
            if found:
                return found[0]
        raise UnknownCheckpointError(f"unknown checkpoint {name!r}; press refresh or check models/Stable-diffusion")

    def default_checkpoint(self) -> CheckpointInfo | None:
        with self._lock:
            if self._loaded:
                return next(reversed(self._loaded.values())).info
            # The user's own checkpoints first; the shipped demo only when there is none.
            return next((e for e in self._entries if e.error is None), None)

    # ------------------------------------------------------------------ loading

    @property
    def cache_size(self) -> int:
        return self._cache_size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        with self._lock:
            self._cache_size = max(1, int(size))
            self._evict(keep=self._cache_size)

    def loaded(self) -> list[LoadedCheckpoint]:
        with self._lock:
            return list(self._loaded.values())

    def load(self, name: str) -> LoadedCheckpoint:
        return self._load_together([name])[0]

    def load_with_refiner(self, name: str, refiner: str) -> tuple[LoadedCheckpoint, LoadedCheckpoint]:
        """The checkpoint and its refiner, both kept in the cache (whatever its size) and on the device,
        so the next job with the pair loads nothing. The checkpoint stays the current one."""
        refiner_model, base = self._load_together([refiner, name])
        return base, refiner_model

    def _load_together(self, names: list[str]) -> list[LoadedCheckpoint]:
        infos = [self.find(name) for name in names]
        for info in infos:
            if info.error:
                raise CheckpointLoadError(f"{info.name}: {info.error}")
        keys = {info.path.resolve() for info in infos}
        room = max(self._cache_size, len(keys))  # a refiner job holds both models even with a cache of one
        found = []
        for info in infos:
            key = info.path.resolve()
            with self._lock:
                if key in self._loaded:  # hot swap: already in memory
                    self._loaded.move_to_end(key)
                    found.append(self._loaded[key])
                    continue
                # The models this job does not use go to RAM first, so the new one has the VRAM they held.
                self._park_all_but(keys)
            # Build the new model completely before anything is evicted, so a bad file loses nothing.
            loaded = self._read(info)
            with self._lock:
                self._evict(keep=room - 1, protect=keys)
                self._loaded[key] = loaded
                found.append(loaded)
        with self._lock:
            self._park_all_but(keys)
        return found

    def _park_all_but(self, current: set[Path]) -> None:
        """The `current` models on the device; with keep_in_cpu and a cache of more than one, every other
        cached model in RAM. Only on an accelerator without offloading (offloading moves the parts itself)."""
        if self.device.device.type == "cpu" or self.device.offload != "none":
            return
        parks = self.keep_in_cpu and self._cache_size > 1
        moved = False
        for key, loaded in self._loaded.items():
            in_ram = loaded.pipe.unet.device.type == "cpu"
            if key in current and in_ram:
                log.info("moving checkpoint %s to %s", loaded.info.name, self.device.device)
                loaded.pipe.to(self.device.device)
            elif key not in current and not in_ram and parks:
                log.info("keeping checkpoint %s in RAM (sd_checkpoints_keep_in_cpu)", loaded.info.name)
                loaded.pipe.to("cpu")
                moved = True
        if moved:
            release_cached_memory()  # the VRAM the parked models held goes back to the allocator

    def _read(self, info: CheckpointInfo) -> LoadedCheckpoint:
        log.info("loading checkpoint %s", info.name)
        if info.path.is_dir():
            pipe, variant = load_diffusers_folder(info.path, self.device)
        else:
            pipe, variant = load_single_file(info.path, self.device)
            info.sha256 = self.hashes.sha256(info.path)
        info.variant = variant
        if self.compiler is not None:
            self.compiler.compile(pipe.unet)
        return LoadedCheckpoint(info=info, variant=variant, pipe=pipe)

    def unload_all(self) -> None:
        with self._lock:
            self._evict(keep=0)

    def _evict(self, keep: int, protect: set[Path] = frozenset()) -> None:
        evicted = False
        while len(self._loaded) > max(keep, 0):
            # Only the cache's reference goes: a job still using the model keeps its own until it ends,
            # and the memory is released then. The models of the job being loaded stay.
            oldest = next((key for key in self._loaded if key not in protect), None)
            if oldest is None:
                break
            old = self._loaded.pop(oldest)
            log.info("unloading checkpoint %s", old.info.name)
            evicted = True
        if evicted:
            release_cached_memory()


def _inside_diffusers(path: Path, root: Path) -> bool:
    return any((parent / "model_index.json").is_file() for parent in path.parents if parent != root and root in parent.parents)
