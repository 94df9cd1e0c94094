"""The ControlNet list and an LRU cache of loaded ControlNets.

One store is created by the app and passed explicitly (no module globals). A
request names a ControlNet the way sd-webui-controlnet does ("name [hash]");
`load` returns the cached model or reads the file. A file that fails to load
raises ControlNetLoadError and leaves the cache as it was: the new model is
built completely before anything is evicted.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import ControlNetModel

from backend.devices import release_cached_memory
from backend.models.errors import CheckpointLoadError

from .convert import load_file, load_folder
from .scan import FOLDER_CONFIG, folder_weights, identify, identify_folder, old_model_hash, read_keys
from .types import WEIGHT_EXTENSIONS, ControlNetInfo, ControlNetLoadError, UnknownControlNetError, UnsupportedControlNet

log = logging.getLogger(__name__)
Signature = tuple  # (resolved path, mtime_ns, size): a file version


@dataclass
class _Cached:
    info: ControlNetInfo
    signature: Signature | None
    model: ControlNetModel


class ControlNetStore:
    def __init__(self, dirs: list[Path], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 cache_size: int = 2):
        self.dirs = [Path(d) for d in dirs]
        self.device = torch.device(device)
        self.dtype = dtype
        self.last_load_seconds = 0.0  # time of the last real file load
        self.load_count = 0  # real file loads so far (cache hits do not count)
        self._lock = threading.RLock()  # guards the list and the cache
        self._read_lock = threading.Lock()  # one file read at a time: two jobs asking for one model read it once
        self._cache_size = max(0, int(cache_size))
        self._entries: list[ControlNetInfo] = []
        self._described: dict[Signature, ControlNetInfo] = {}  # scan results (identity, hash) per file version
        self._models: OrderedDict[Path, _Cached] = OrderedDict()  # least recently used first
        self.refresh()

    # ------------------------------------------------------------------ listing

    def refresh(self) -> list[ControlNetInfo]:
        """Rescan the folders, sorted by name. Unusable files are listed with the reason in `error`."""
        found: dict[Path, ControlNetInfo] = {}
        seen: set[Signature] = set()
        for root in self.dirs:
            for path, is_folder in _walk(root):
                if path.resolve() not in found:
                    found[path.resolve()] = self._describe(path, root, is_folder, seen)
        with self._lock:
            self._described = {s: i for s, i in self._described.items() if s in seen}  # forget old file versions
            self._entries = sorted(found.values(), key=lambda e: (e.name.lower(), e.name))
            return list(self._entries)

    def _describe(self, path: Path, root: Path, is_folder: bool, seen: set[Signature]) -> ControlNetInfo:
        name = path.relative_to(root).as_posix()
        signature = _signature(path)
        seen.add(signature)
        if signature is not None and (known := self._described.get(signature)):
            return known if (known.path, known.name) == (path, name) else replace(known, path=path, name=name)
        info = ControlNetInfo(path=path, name=name)
        try:
            if is_folder:
                identity = identify_folder(path)
                info.hash8 = old_model_hash(folder_weights(path))
            else:
                info.hash8 = old_model_hash(path)
                identity = identify(read_keys(path))
            info.kind, info.family = identity.kind, identity.family
        except (CheckpointLoadError, UnsupportedControlNet, OSError) as exc:
            info.error = str(exc).removeprefix(f"{path.name}: ")
        if signature is not None:
            self._described[signature] = info
        return info

    def files(self, kind: str | None = None) -> list[ControlNetInfo]:
        with self._lock:
            return [e for e in self._entries if kind is None or e.kind == kind]

    def find(self, name: str) -> ControlNetInfo:
        """By title "name [hash]", name, file name, model name (any case), or "name [stale hash]"."""
        found = self._match(name)
        if found is None:  # a file dropped in since the last scan
            self.refresh()
            found = self._match(name)
        if found is None:
            raise UnknownControlNetError(f"unknown ControlNet {name!r}; put it in models/ControlNet and press refresh")
        return found

    def _match(self, name: str) -> ControlNetInfo | None:
        wanted = name.strip()
        base = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        with self._lock:
            entries = list(self._entries)
        for match in (
            lambda e: e.title == wanted,
            lambda e: wanted in (e.name, e.name.rsplit("/", 1)[-1], e.model_name),
            lambda e: e.model_name.lower() == wanted.lower(),  # sd-webui-controlnet matches names in any case
            lambda e: base in (e.name, e.model_name),  # the file changed since the caller saw its hash
        ):
            if hits := [e for e in entries if match(e)]:
                return hits[0]
        return None

    # ------------------------------------------------------------------ loading

    @property
    def cache_size(self) -> int:
        return self._cache_size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        with self._lock:
            self._cache_size = max(0, int(size))
            self._evict(keep=self._cache_size)

    def cached(self) -> list[Path]:
        """Paths of the models in memory, least recently used first."""
        with self._lock:
            return [c.info.path for c in self._models.values()]

    def load(self, name: str) -> tuple[ControlNetInfo, ControlNetModel]:
        """(info, ControlNetModel) in eval mode on the store's device and dtype; cached models cost nothing."""
        info = self.find(name)
        if info.kind != "controlnet":
            raise ControlNetLoadError(f"{info.name}: this is an IP-Adapter, not a ControlNet; use it in an IP-Adapter unit")
        if info.error:
            raise ControlNetLoadError(f"{info.name}: {info.error}")
        key = info.path.resolve()
        if (hit := self._hit(key, info)) is not None:
            return hit
        with self._read_lock:
            if (hit := self._hit(key, info)) is not None:  # another job read it while this one waited
                return hit
            start = time.perf_counter()
            model = self._read(info)
            seconds = time.perf_counter() - start
            with self._lock:
                self.last_load_seconds = seconds
                self.load_count += 1
                if self._cache_size > 0:
                    self._evict(keep=self._cache_size - 1)
                    self._models[key] = _Cached(info, _signature(info.path), model)
        log.info("loaded ControlNet %s in %.2f s", info.name, seconds)
        return info, model

    def _hit(self, key: Path, info: ControlNetInfo) -> tuple[ControlNetInfo, ControlNetModel] | None:
        with self._lock:
            cached = self._models.get(key)
            if cached is None:
                return None
            now = _signature(info.path)
            if now is not None and now != cached.signature:  # the file was replaced: read it again
                del self._models[key]
                return None
            self._models.move_to_end(key)
            return cached.info, cached.model

    def _read(self, info: ControlNetInfo) -> ControlNetModel:
        try:
            model, family = load_folder(info.path, self.dtype) if info.path.is_dir() else load_file(info.path, self.dtype)
            model = model.to(self.device).eval()
        except (CheckpointLoadError, UnsupportedControlNet) as exc:
            info.error = str(exc).removeprefix(f"{info.path.name}: ")  # the file itself is bad: list it so
            raise ControlNetLoadError(f"{info.name}: {info.error}") from None
        except OSError as exc:
            raise ControlNetLoadError(f"{info.name}: cannot read it ({exc})") from None
        except torch.OutOfMemoryError:
            raise ControlNetLoadError(f"{info.name}: not enough {self.device.type} memory to load it") from None
        info.family = family
        return model

    def unload_all(self) -> None:
        with self._lock:
            self._evict(keep=0)

    def _evict(self, keep: int) -> None:
        evicted = False
        while len(self._models) > max(keep, 0):
            # Only the cache's reference goes: a job still using the model keeps it until the job ends.
            _, old = self._models.popitem(last=False)
            log.info("unloading ControlNet %s", old.info.name)
            evicted = True
        if evicted:
            release_cached_memory()


def _signature(path: Path) -> Signature | None:
    """Identifies a file version (a folder by its weights file); None when it is gone."""
    try:
        target = folder_weights(path) if path.is_dir() else path
        stat = (target or path / FOLDER_CONFIG).stat()
    except OSError:
        return None
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _walk(root: Path):
    """(path, is_diffusers_folder) under root, following links once; files inside a diffusers folder are its own."""
    if not root.is_dir():
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        here = Path(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if here != root and FOLDER_CONFIG in filenames:
            dirnames[:] = []
            yield here, True
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith(".") and filename.lower().endswith(WEIGHT_EXTENSIONS):
                yield here / filename, False
