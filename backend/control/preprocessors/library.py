"""The preprocessor library: what exists, what files each needs, and running one on a picture.

One object per app (the control library makes it), holding the only cache of
loaded annotator networks; no module globals. Family modules import their
heavy libraries (controlnet-aux, transformers) only when first run.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from backend.control.preprocessors import depth_transformers, midas, openpose, simple, softedge
from backend.control.preprocessors.imaging import hwc3, resize, rgb_array, working_size
from backend.control.preprocessors.spec import Entry, Job, PreprocessorSpec, UnknownPreprocessorError

MAX_RESOLUTION = 8192
# UI order: none first, then the families in the order A1111 users know them
_CATEGORY_ORDER = ["", "canny", "depth", "openpose", "softedge", "scribble", "lineart", "shuffle", "tile"]


def _entries() -> list[Entry]:
    found = [*simple.ENTRIES, *midas.ENTRIES, *depth_transformers.ENTRIES, *openpose.ENTRIES, *softedge.ENTRIES]
    return sorted(found, key=lambda e: _CATEGORY_ORDER.index(e.spec.category))


class PreprocessorLibrary:
    def __init__(self, annotator_dir: Path, device: torch.device | str = "cpu", cache_size: int = 4):
        self.annotator_dir = Path(annotator_dir)
        self.device = torch.device(device)
        self.cache_size = max(0, int(cache_size))
        self._entries = _entries()
        self._by_name: dict[str, Entry] = {}
        for entry in self._entries:
            for name in (entry.spec.name, *entry.spec.aliases):
                self._by_name[name.lower()] = entry
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_lock = threading.Lock()
        # networks keep state between calls (DPT's hooks write activations into a dict): one run at a time
        self._run_lock = threading.Lock()

    def add_entry(self, entry: Entry) -> None:
        """An extension's preprocessor, after the built-ins; a name (or alias) already known is refused."""
        names = [entry.spec.name, *entry.spec.aliases]
        if any(n.lower() in self._by_name for n in names):
            raise ValueError(f"preprocessor {entry.spec.name!r} is taken")
        self._entries.append(entry)
        for name in names:
            self._by_name[name.lower()] = entry

    # --- what exists ---
    def specs(self) -> list[PreprocessorSpec]:
        return [e.spec for e in self._entries]

    def find(self, name: str) -> PreprocessorSpec:
        return self._entry(name).spec

    def missing_files(self, name: str) -> list[Path]:
        entry = self._entry(name)
        if entry.missing is not None:
            return entry.missing(self.annotator_dir)
        return [self.annotator_dir / f for f in entry.spec.weight_files if not (self.annotator_dir / f).is_file()]

    @property
    def loaded(self) -> list[str]:
        """Keys of the networks in the cache, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def unload(self) -> None:
        """Drop every cached network (frees memory; the next run reads its files again)."""
        with self._cache_lock:
            self._cache.clear()

    # --- running ---
    def run(self, name: str, image: Image.Image, resolution: int | None = None,
            threshold_a: float | None = None, threshold_b: float | None = None) -> Image.Image:
        """The control map of `image` as RGB, at the working size (shorter side `resolution`)."""
        entry = self._entry(name)
        spec = entry.spec
        pixels = rgb_array(image)
        if spec.resolution is not None:
            res = int(spec.resolution.value if resolution is None or resolution <= 0 else resolution)
            if not 8 <= res <= MAX_RESOLUTION:  # a shared link must not be able to ask for a 10^10-pixel map
                raise ValueError(f"{spec.name}: resolution {res} is out of range (8 to {MAX_RESOLUTION}; the slider "
                                 f"goes {spec.resolution.minimum:g} to {spec.resolution.maximum:g})")
            h, w = pixels.shape[:2]
            pixels = resize(pixels, working_size(w, h, res))
        a = _value(spec.threshold_a, threshold_a)
        b = _value(spec.threshold_b, threshold_b)
        job = Job(spec, self.annotator_dir, self.device, self._network, self._has)
        with self._run_lock:
            out = entry.run(job, pixels, a, b)
        out = hwc3(np.ascontiguousarray(out, dtype=np.uint8))
        return Image.fromarray(out, mode="RGB")

    def _entry(self, name: str) -> Entry:
        entry = self._by_name.get(str(name).strip().lower())
        if entry is None:
            choices = ", ".join(e.spec.name for e in self._entries)
            raise UnknownPreprocessorError(f"unknown preprocessor {name!r}; choose one of: {choices}")
        return entry

    def _has(self, key: str) -> bool:
        with self._cache_lock:
            return key in self._cache

    def _network(self, key: str, build: Callable[[], object]) -> object:
        # called inside run(), under the run lock: a network is never loaded twice at once
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        network = build()
        with self._cache_lock:
            if self.cache_size:
                self._cache[key] = network
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return network


def _value(slider, given: float | None) -> float:
    if slider is None:
        return 0.0
    return float(slider.value if given is None else given)
