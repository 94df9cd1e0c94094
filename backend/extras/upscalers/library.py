"""The upscalers a studio offers: built-in resizes plus the model files in its folders.

Files are found on the first listing (or `refresh`), read by the studio's safe loader on first use, and
kept in a small LRU cache; what was learnt about a file (its scale, or why it cannot serve) is kept per
(path, size, mtime), so a listing reads each file once and a replaced file is read again.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from PIL import Image

from backend.devices import is_out_of_memory, release_cached_memory
from backend.extras.spandrel_models import ExtrasModelError, load_image_model
from backend.extras.upscalers import files as found
from backend.extras.upscalers import images
from backend.extras.upscalers.engine import compute_dtype, upscale_with_model
from backend.extras.upscalers.errors import UpscaleError
from backend.extras.upscalers.sizes import center_box, check_output_size, resize_plan

_RESAMPLE = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
_Key = tuple[str, int, int]


@dataclass(frozen=True)
class _Facts:
    """What reading a file taught us."""
    scale: int | None = None
    architecture: str | None = None
    error: str | None = None


class UpscalerLibrary:
    def __init__(self, dirs: Mapping[str, Sequence[Path]], device: torch.device, dtype: torch.dtype,
                 cache_size: int = 1):
        self._dirs = {family: [Path(p) for p in folders] for family, folders in dirs.items()}
        self._device = torch.device(device)
        self._dtype = dtype
        self._cache_size = max(0, int(cache_size))
        self._lock = threading.RLock()  # guards the lists and caches, never held while a picture is upscaled
        self._files: list[found.UpscalerFile] | None = None
        self._facts: dict[_Key, _Facts] = {}
        self._models: OrderedDict[_Key, tuple[found.UpscalerFile, object, torch.dtype]] = OrderedDict()
        self._from_extensions: dict[str, object] = {}  # name -> an extension's Upscaler (upscale, scale)

    def add_extension_upscaler(self, upscaler) -> None:
        """An extension's upscaler (backend/extensions/specs.py Upscaler), listed after the built-ins."""
        if upscaler.name in found.BUILTIN_UPSCALERS or upscaler.name in self._from_extensions:
            raise UpscaleError(f"upscaler {upscaler.name!r} is taken")
        self._from_extensions[upscaler.name] = upscaler

    # ----- listing -------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the folders; facts and loaded models of files that are gone or changed are dropped."""
        with self._lock:
            self._files = found.scan(self._dirs)
            keys = {self._key(f) for f in self._files}
            self._facts = {k: v for k, v in self._facts.items() if k in keys}
            for key in [k for k in self._models if k not in keys]:
                del self._models[key]

    def names(self) -> list[str]:
        """"None", "Lanczos", "Nearest", then every usable file by name (A1111 sorts them ignoring case)."""
        return [*found.BUILTIN_UPSCALERS, *self._from_extensions, *(f.name for f, _ in self._usable())]

    def entries(self, family: str | None = None) -> list[dict]:
        """A1111's GET /sdapi/v1/upscalers items; with `family` ("RealESRGAN", ...), only the files found in
        that family's folders."""
        builtins = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                    for n in found.BUILTIN_UPSCALERS]  # A1111 reports its default 4 for these
        files = [{"name": f.name, "model_name": f.stem, "model_path": str(f.path), "model_url": None,
                  "scale": facts.scale} for f, facts in self._usable() if family in (None, f.family)]
        extension = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": u.scale}
                     for n, u in self._from_extensions.items()]
        return files if family else builtins + extension + files

    def unusable(self) -> list[dict]:
        """Files in the folders that cannot serve as upscalers, each with the reason."""
        return [{"name": f.name, "model_path": str(f.path), "error": facts.error}
                for f, facts in self._all_facts() if facts.error]

    def model_scale(self, name: str) -> int | None:
        """The scale the model itself declares (not the one its name suggests); None for the built-ins."""
        if name in found.BUILTIN_UPSCALERS:
            return None
        if name in self._from_extensions:
            return self._from_extensions[name].scale
        file = self._find(name)
        facts = self._facts_of(file)
        if facts.error:
            raise UpscaleError(f"upscaler {file.name!r} ({file.path}) cannot be used: {facts.error}")
        return facts.scale

    def load(self, name: str):
        """The spandrel ImageModelDescriptor behind `name`, loaded (and cached) on the studio's device."""
        if name in found.BUILTIN_UPSCALERS:
            raise UpscaleError(f"{name!r} is a built-in resize, not a model")
        return self._model(self._find(name))[0]

    def loaded(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        with self._lock:
            return [file.name for file, _, _ in self._models.values()]

    def unload(self) -> None:
        """Drop every loaded model (e.g. before a checkpoint needs the memory)."""
        with self._lock:
            self._models.clear()
        release_cached_memory()

    # ----- upscaling -----------------------------------------------------------------------------------

    def upscale(self, image: Image.Image, name: str, *, scale: float | None = None,
                size: tuple[int, int] | None = None, crop: bool = False, tile: int = 192, tile_overlap: int = 8,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Image.Image:
        """`image` upscaled by `name` to A1111's extras size (see sizes.target_size). Without scale or size a
        model upscales by its own scale. "None" gives the picture back unchanged."""
        if name == "None":
            return image.copy()
        if name in _RESAMPLE:
            return self._resize(image, _RESAMPLE[name], scale, size, crop)
        if name in self._from_extensions:
            return self._extension_upscale(self._from_extensions[name], image, scale, size, crop)
        file = self._find(name)
        if scale is not None or size is not None:  # refuse an impossible size before reading the model
            cover, final = resize_plan(image.width, image.height, scale=scale, size=size, crop=crop)
            check_output_size(*cover)
            check_output_size(*final)
        model, dtype = self._model(file)
        if scale is None and size is None:
            scale = model.scale
        return upscale_with_model(model, image, scale=scale, size=size, crop=crop, tile=tile,
                                  tile_overlap=tile_overlap, device=self._device, dtype=dtype,
                                  progress=progress, should_stop=should_stop)

    def _extension_upscale(self, upscaler, image: Image.Image, scale, size, crop) -> Image.Image:
        """The extension's own upscale at its scale, then Lanczos to the size asked for (as for a model)."""
        if scale is None and size is None:
            scale = upscaler.scale
        cover, final = resize_plan(image.width, image.height, scale=scale, size=size, crop=crop)
        check_output_size(*cover)
        check_output_size(*final)
        out = upscaler.upscale(image, float(scale or upscaler.scale))
        if not isinstance(out, Image.Image):
            raise UpscaleError(f"upscaler {upscaler.name!r} gave {type(out).__name__}, not a picture")
        return out if out.size == final else self._resize(out, _RESAMPLE["Lanczos"], None, final, crop)

    @staticmethod
    def _resize(image, resample, scale, size, crop) -> Image.Image:
        cover, final = resize_plan(image.width, image.height, scale=scale, size=size, crop=crop)
        check_output_size(*cover)
        check_output_size(*final)
        rgb, alpha = images.split_alpha(image)
        return images.finish(rgb, alpha, cover, center_box(cover, final) if cover != final else None, resample)

    # ----- files, facts, models ------------------------------------------------------------------------

    def _scanned(self) -> list[found.UpscalerFile]:
        with self._lock:
            if self._files is None:
                self.refresh()
            return list(self._files)

    @staticmethod
    def _key(file: found.UpscalerFile) -> _Key:
        try:
            st = file.path.stat()
        except OSError:
            return (str(file.path), -1, -1)
        return (str(file.path), st.st_size, st.st_mtime_ns)

    def _find(self, name: str) -> found.UpscalerFile:
        file = found.find(self._scanned(), name)
        if file is None:
            raise UpscaleError(f"no upscaler named {name!r}. Available: {', '.join(self.names())}. "
                               f"{found.where_files_go(self._dirs)}, then refresh the list.")
        return file

    def _all_facts(self) -> list[tuple[found.UpscalerFile, _Facts]]:
        return [(f, self._facts_of(f)) for f in self._scanned()]

    def _usable(self) -> list[tuple[found.UpscalerFile, _Facts]]:
        return sorted(((f, facts) for f, facts in self._all_facts() if not facts.error),
                      key=lambda pair: pair[0].name.lower())

    def _facts_of(self, file: found.UpscalerFile) -> _Facts:
        with self._lock:
            key = self._key(file)
            if key not in self._facts:
                if key[1] < 0:
                    return _Facts(error="the file is no longer there; refresh the list of upscalers")
                if self._device.type == "cpu" and self._cache_size:
                    try:  # on the CPU, the model read to learn its facts is the one to keep
                        self._load(file, key)
                    except UpscaleError:
                        pass  # _load recorded why
                else:
                    try:
                        self._learn(key, _usable_model(file.path, "cpu"))
                    except ExtrasModelError as exc:
                        self._facts[key] = _Facts(error=str(exc))
            return self._facts[key]

    def _learn(self, key: _Key, descriptor) -> None:
        self._facts[key] = _Facts(scale=int(descriptor.scale), architecture=descriptor.architecture.name)

    def _model(self, file: found.UpscalerFile):
        with self._lock:
            key = self._key(file)
            if key in self._models:
                self._models.move_to_end(key)
                _, model, dtype = self._models[key]
                return model, dtype
            facts = self._facts.get(key)
            if facts is None or not facts.error:
                return self._load(file, key)
            raise UpscaleError(f"upscaler {file.name!r} ({file.path}) cannot be used: {facts.error}")

    def _load(self, file: found.UpscalerFile, key: _Key):
        if key[1] < 0:
            raise UpscaleError(f"{file.path} is no longer there; refresh the list of upscalers")
        try:
            model = _usable_model(file.path, self._device)
        except ExtrasModelError as exc:
            self._facts[key] = _Facts(error=str(exc))
            raise UpscaleError(f"upscaler {file.name!r} ({file.path}) cannot be used: {exc}") from None
        self._learn(key, model)
        dtype = compute_dtype(model, self._device, self._dtype)
        if dtype != torch.float32:
            model = model.to(dtype)
        if self._cache_size:
            self._models[key] = (file, model, dtype)
            evicted = False
            while len(self._models) > self._cache_size:
                self._models.popitem(last=False)
                evicted = True
            if evicted and self._device.type != "cpu":
                release_cached_memory()
        return model, dtype


def _usable_model(path: Path, device):
    """A spandrel descriptor for a picture-to-picture model that is not a face restorer."""
    try:
        model = load_image_model(path, device)
    except ExtrasModelError:
        raise
    except Exception as exc:  # one odd file must not break the listing of the others
        if is_out_of_memory(exc):
            raise UpscaleError(f"{path.name}: not enough memory to load it; free memory and try again") from None
        raise ExtrasModelError(f"{path.name}: could not be read as an upscaler "
                               f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if model.purpose == "FaceSR":
        raise ExtrasModelError(f"{path.name}: this is a face-restoration model ({model.architecture.name}): put "
                               "it in models/GFPGAN or models/Codeformer and use it under Restore faces")
    return model
