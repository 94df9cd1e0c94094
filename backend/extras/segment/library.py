"""The SAM models in the user's folders, one loaded at a time, and the two things they do: click-to-mask and
segment-everything.

One lock covers loading and predicting: a SamPredictor holds one picture's
embedding at a time, so two users' clicks must not interleave set_image and
predict. The previous model keeps serving until a new one has loaded; a file
that fails (hostile, damaged, not SAM) is refused with its reason.
"""
from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from backend.extras.segment.common import SamModelNotFound, SamPrediction, Segment, SegmentError
from backend.extras.segment.embeddings import CachingPredictor, EmbeddingCache
from backend.extras.segment.model import load_sam, read_config
from backend.images.loading import to_rgb

WEIGHT_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin", ".safetensors"}
# SamAutomaticMaskGenerator's own keyword arguments that a caller may set (the model and the
# output form are ours: masks come back as bool arrays)
GENERATOR_OPTIONS = frozenset(inspect.signature(SamAutomaticMaskGenerator.__init__).parameters) - {
    "self", "model", "output_mode"}

Point = tuple[float, float]


@dataclass
class _Loaded:
    key: tuple[str, int, int]   # name, size, mtime: a replaced file is a different model
    sam: Sam
    predictor: CachingPredictor


class SamLibrary:
    def __init__(self, dirs: Sequence[Path], device: torch.device, dtype: torch.dtype = torch.float32,
                 embedding_cache: int = 4) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.device = torch.device(device)
        self.dtype = dtype
        self.encoder_runs = 0
        self._embeddings = EmbeddingCache(embedding_cache)
        self._lock = threading.RLock()
        self._files: dict[str, Path] = {}
        self._loaded: _Loaded | None = None
        self._types: dict[tuple[str, int, int], str] = {}
        self.refresh()

    # --- the folders ---------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the folders (first folder wins a name both hold); forget a loaded model whose file went."""
        files: dict[str, Path] = {}
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
                if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES and not path.name.startswith("."):
                    files.setdefault(path.name, path)
        with self._lock:
            self._files = files
            if self._loaded and self._file_key(self._loaded.key[0]) != self._loaded.key:
                self._embeddings.drop_model(self._loaded.key)
                self._loaded = None

    def model_names(self) -> list[str]:
        return list(self._files)

    def _path(self, name: str) -> Path:
        path = self._files.get(name)
        if path is None or not path.is_file():
            where = ", ".join(str(d) for d in self.dirs) or "models/sam"
            have = ", ".join(self._files) or "none"
            raise SamModelNotFound(f"SAM model {name!r} not found; put it in {where} (installed: {have}). "
                                   "The models are sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth and "
                                   "sam_vit_h_4b8939.pth from the segment-anything release.")
        return path

    def _file_key(self, name: str) -> tuple[str, int, int] | None:
        path = self._files.get(name)
        try:
            stat = path.stat() if path else None
        except OSError:
            return None
        return (name, stat.st_size, stat.st_mtime_ns) if stat else None

    def model_type(self, name: str) -> str:
        """"vit_b" / "vit_l" / "vit_h" from the weights' shapes ("custom" for other sizes in SAM's layout)."""
        path = self._path(name)
        key = self._file_key(name)
        if key not in self._types:
            self._types[key] = read_config(path).model_type
        return self._types[key]

    # --- loading -------------------------------------------------------------

    def _count_encoder_run(self) -> None:
        self.encoder_runs += 1

    def _model(self, name: str) -> _Loaded:
        """The loaded model `name`, loading it (and only then letting the previous one go). Holds the lock."""
        path = self._path(name)
        key = self._file_key(name)
        if self._loaded is not None and self._loaded.key == key:
            return self._loaded
        sam, config = load_sam(path, self.device, self.dtype, self._count_encoder_run)
        self._types[key] = config.model_type
        self._loaded = _Loaded(key, sam, CachingPredictor(sam, self._embeddings, key))
        return self._loaded

    # --- click to mask -------------------------------------------------------

    def predict(self, model: str, image: Image.Image, positive: Sequence[Point] = (),
                negative: Sequence[Point] = (), box: tuple[float, float, float, float] | None = None
                ) -> SamPrediction:
        """SAM's three candidate masks for the clicked points (pixels, x right, y down) and/or a box (x0,y0,x1,y1).

        Negative points alone are allowed, as in the extension: SAM then masks
        what is not like the clicked places. No points and no box is an error.
        """
        picture = np.asarray(to_rgb(image))
        height, width = picture.shape[:2]
        points = [_point(p, f"positive point {i + 1}", width, height) for i, p in enumerate(positive)]
        points += [_point(p, f"negative point {i + 1}", width, height) for i, p in enumerate(negative)]
        corners = _box(box, width, height) if box is not None else None
        if not points and corners is None:
            raise SegmentError("add at least one point (or a box) to segment: SAM needs a prompt")
        coords = np.array(points, dtype=np.float32) if points else None
        labels = np.array([1] * len(positive) + [0] * len(negative)) if points else None
        with self._lock:
            loaded = self._model(model)
            loaded.predictor.set_image(picture)
            masks, scores, _ = loaded.predictor.predict(point_coords=coords, point_labels=labels, box=corners,
                                                        multimask_output=True)
        return SamPrediction(masks=[np.asarray(m, dtype=bool) for m in masks],
                             scores=[float(s) for s in scores])

    # --- segment everything --------------------------------------------------

    def everything(self, model: str, image: Image.Image, **generator_options) -> list[Segment]:
        """Every region SamAutomaticMaskGenerator finds, largest first.

        Options are the generator's own (points_per_side=32, pred_iou_thresh=0.88,
        stability_score_thresh=0.95, box_nms_thresh=0.7, crop_n_layers=0, ...).
        """
        unknown = sorted(set(generator_options) - GENERATOR_OPTIONS)
        if unknown:
            raise SegmentError(f"unknown segment-everything option(s) {', '.join(unknown)}; "
                               f"choose from {', '.join(sorted(GENERATOR_OPTIONS))}")
        side = generator_options.get("points_per_side", 32)
        if generator_options.get("point_grids") is None and (not isinstance(side, int) or not 1 <= side <= 128):
            raise SegmentError(f"points_per_side must be a whole number from 1 to 128, got {side!r}")
        picture = np.asarray(to_rgb(image))
        with self._lock:
            loaded = self._model(model)
            try:
                generator = SamAutomaticMaskGenerator(loaded.sam, **generator_options)
            except (AssertionError, ImportError, TypeError, ValueError) as exc:
                raise SegmentError(f"segment-everything options refused: {exc}") from None
            generator.predictor = loaded.predictor  # its crops' embeddings are cached like clicks'
            records = generator.generate(picture)
        segments = [Segment(mask=np.asarray(r["segmentation"], dtype=bool), area=int(r["area"]),
                            bbox=tuple(float(v) for v in r["bbox"]), score=float(r["predicted_iou"]))
                    for r in records]
        return sorted(segments, key=lambda s: -s.area)


def _point(point: Sequence[float], what: str, width: int, height: int) -> Point:
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise SegmentError(f"{what} must be two numbers [x, y], got {point!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
        raise SegmentError(f"{what} ({x:g}, {y:g}) is outside the {width}x{height} picture")
    return x, y


def _box(box: Sequence[float], width: int, height: int) -> np.ndarray:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise SegmentError(f"the box must be four numbers [x0, y0, x1, y1], got {box!r}") from None
    _point((x0, y0), "the box's top-left corner", width, height)
    _point((x1, y1), "the box's bottom-right corner", width, height)
    if not (x0 < x1 and y0 < y1):
        raise SegmentError(f"the box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is empty: x0 < x1 and y0 < y1 are needed")
    return np.array([x0, y0, x1, y1], dtype=np.float32)
