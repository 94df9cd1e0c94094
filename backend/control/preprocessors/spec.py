"""What a preprocessor is, as the UI and the API see it, and the errors the package raises.

Names, aliases and sliders follow sd-webui-controlnet, so clients written for
A1111's extension (module names, threshold_a/threshold_b) work unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Slider:
    """A UI slider / API threshold, as sd-webui-controlnet's preprocessor_sliders_config."""
    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1.0


RESOLUTION = Slider("Preprocessor Resolution", 64, 2048, 512, 8)


@dataclass(frozen=True)
class PreprocessorSpec:
    name: str  # sd-webui-controlnet module name ("canny", "depth_midas", ...)
    aliases: tuple[str, ...] = ()  # legacy / display names clients still send
    weight_files: tuple[str, ...] = ()  # names needed in the annotator folder (empty: needs none)
    resolution: Slider | None = RESOLUTION  # None: runs at the image's own size
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    binary: bool = False  # the map is pure black/white: resize it with nearest
    category: str = ""  # "canny", "depth", "openpose", ... (the UI's filter)


class UnknownPreprocessorError(ValueError):
    pass


class AnnotatorMissingError(ValueError):
    """A weight file (or model folder) the chosen preprocessor needs is not in the annotator folder."""


class AnnotatorLoadError(ValueError):
    """A weight file is there but damaged, hostile or of another model; nothing from it ran."""


class Job:
    """One preprocessor run, as a family's function sees it: where files are, where to run, the cache."""

    def __init__(self, spec: PreprocessorSpec, annotator_dir: Path, device, network: Callable,
                 has: Callable[[str], bool]):
        self.spec = spec
        self.annotator_dir = annotator_dir
        self.device = device
        self._network = network
        self._has = has

    def has(self, key: str) -> bool:
        """Whether the network under `key` is loaded already (its file is then not needed)."""
        return self._has(key)

    def network(self, key: str, build: Callable[[], object]) -> object:
        """The loaded network under `key` from the library's cache; `build()` runs only on a miss."""
        return self._network(key, build)

    def file(self, name: str) -> Path:
        path = self.annotator_dir / name
        if not path.is_file():
            raise AnnotatorMissingError(missing_message(self.spec.name, name, self.annotator_dir))
        return path


def missing_message(preprocessor: str, name: str, folder: Path) -> str:
    return (f"{preprocessor} needs {name} in {folder} (lllyasviel/Annotators on Hugging Face has it; "
            "put the file there and try again)")


# A family's function: (job, RGB uint8 HxWx3 at the working size, threshold_a, threshold_b) -> map.
RunFn = Callable[[Job, np.ndarray, float, float], np.ndarray]


@dataclass(frozen=True)
class Entry:
    spec: PreprocessorSpec
    run: RunFn
    # Where the needed files are not plain names in the folder (a transformers model folder), this
    # says which are absent; otherwise spec.weight_files are checked.
    missing: Callable[[Path], list[Path]] | None = None
