"""Image embeddings kept between clicks: the encoder runs once per picture, every click after that is cheap.

SAM's cost is almost all in the image encoder (ViT-H: seconds per picture on a
GPU, far more on a CPU); the prompt encoder and mask decoder take milliseconds.
An embedding is keyed by the model (name and file identity) and a hash of the
picture's pixels, so the same picture sent again, by the UI or the API, is
recognised whatever object it arrives in.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam


def pixels_digest(array: np.ndarray) -> str:
    """A hash of an image's pixels and shape (equal pictures, equal digests)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(array.data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Embedding:
    features: torch.Tensor                 # the encoder's output, 1 x C x 64 x 64 for the released models
    original_size: tuple[int, int]         # (H, W) of the picture
    input_size: tuple[int, int]            # (H, W) after ResizeLongestSide


class EmbeddingCache:
    """A small LRU of embeddings; capacity 0 keeps none. Callers hold the library's lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()

    def get(self, key: Hashable) -> Embedding | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: Hashable, embedding: Embedding) -> None:
        if not self.capacity:
            return
        self._items[key] = embedding
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def drop_model(self, model_key: Hashable) -> None:
        for key in [k for k in self._items if k[0] == model_key]:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class CachingPredictor(SamPredictor):
    """SamPredictor whose set_image takes a known picture's embedding from the cache instead of encoding it.

    SamAutomaticMaskGenerator uses the same class (given as its predictor), so
    "segment everything" and the clicks after it share one encoder run.
    """

    def __init__(self, sam: Sam, cache: EmbeddingCache, model_key: Hashable) -> None:
        super().__init__(sam)
        self._cache = cache
        self._model_key = model_key

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = (self._model_key, image_format, pixels_digest(image))
        known = self._cache.get(key)
        if known is None:
            super().set_image(image, image_format)
            self._cache.put(key, Embedding(self.features, tuple(self.original_size), tuple(self.input_size)))
            return
        self.reset_image()
        self.features = known.features
        self.original_size = known.original_size
        self.input_size = known.input_size
        self.is_image_set = True
