"""CLIP image encoders (CLIPVisionModelWithProjection) from a transformers folder or a single file.

Weights are read only through the safe loader; the model is built on the meta
device and takes the loaded tensors directly (assign=True), so nothing is
initialised twice and no file is read by transformers itself.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import init_empty_weights
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from backend.control.ip_adapter.files import encoder_weight_files, folder_config
from backend.control.ip_adapter.types import EncoderInfo
from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict

_PATCH_KEY = "embeddings.patch_embedding.weight"
# Head count is not visible in the weights (q/k/v are hidden x hidden): the known CLIP towers,
# ViT-B/16 768, ViT-L/14 1024, ViT-H/14 1280 and ViT-bigG/14 1664; head width 64 otherwise.
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_OPENAI_WIDTHS = (768, 1024)  # OpenAI's towers use quick_gelu; LAION's open_clip ViT-H/bigG use gelu


_NOT_VISION = ("text_", "logit_scale", "visual_projection")  # parts of a full CLIPModel file


class LRU:
    """A small least-recently-used map (the library owns one per kind of cached thing)."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make: Callable[[], Any]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        self._trim()
        return value

    def resize(self, size: int) -> None:
        self.size = max(1, int(size))
        self._trim()

    def _trim(self) -> None:
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _prefix(keys) -> str:
    """What comes before `embeddings.patch_embedding.weight`: "vision_model." or "" (a flattened layout)."""
    for key in keys:
        if key.endswith(_PATCH_KEY):
            return key[: -len(_PATCH_KEY)]
    raise ValueError("no CLIP vision tower (embeddings.patch_embedding.weight) in the file")


def config_from_shapes(shapes: dict[str, tuple[int, ...]], path: Path) -> dict:
    """A CLIPVisionConfig's arguments read off the tensor shapes of a single-file encoder."""
    if "visual_projection.weight" not in shapes:
        raise CheckpointLoadError(f"{path.name}: no visual_projection.weight; IP-Adapter needs a CLIP vision "
                                  "model with its projection (CLIPVisionModelWithProjection)")
    try:
        p = _prefix(shapes)
        hidden, channels, patch, _ = shapes[p + _PATCH_KEY]
        positions = shapes[p + "embeddings.position_embedding.weight"][0]
        layer_ids = {int(k[len(p) + len("encoder.layers."):].split(".")[0]) for k in shapes
                     if k.startswith(p + "encoder.layers.")}
        return dict(hidden_size=hidden, num_channels=channels, patch_size=patch,
                    image_size=math.isqrt(positions - 1) * patch,  # positions = patches + the class token
                    num_hidden_layers=len(layer_ids),
                    intermediate_size=shapes[p + "encoder.layers.0.mlp.fc1.weight"][0],
                    num_attention_heads=_HEADS.get(hidden, max(1, hidden // 64)),
                    hidden_act="quick_gelu" if hidden in _OPENAI_WIDTHS else "gelu",
                    projection_dim=shapes["visual_projection.weight"][0])
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointLoadError(f"{path.name}: not a CLIP vision model ({exc})") from None


def load_encoder(info: EncoderInfo, device, dtype: torch.dtype) -> CLIPVisionModelWithProjection:
    path = info.path
    if path.is_dir():
        config = CLIPVisionConfig.from_dict(folder_config(path))
        state: dict[str, torch.Tensor] = {}
        for file in encoder_weight_files(path):
            state.update(read_state_dict(file)[0])
    else:
        state = read_state_dict(path)[0]
        config = CLIPVisionConfig(**config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, path))
    with init_empty_weights():
        model = CLIPVisionModelWithProjection(config)
    try:
        theirs, ours = _prefix(state), _prefix(model.state_dict().keys())
    except ValueError as exc:
        raise CheckpointLoadError(f"{info.name}: {exc}") from None
    # Keep the vision tower and projection only (a full CLIPModel file also holds the text tower);
    # rename between "vision_model.*" and a flattened layout, whichever side uses which.
    mapped = {}
    for key, value in state.items():
        rest = key[len(theirs):]
        if key == "visual_projection.weight":
            mapped[key] = value
        elif key.startswith(theirs) and not rest.startswith(_NOT_VISION) and not rest.endswith("position_ids"):
            mapped[ours + rest] = value
    try:
        model.load_state_dict(mapped, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointLoadError(f"{info.name}: the weights do not fit a CLIP vision model ({exc})"[:600]) from None
    return model.to(device=device, dtype=dtype).eval()


def encoder_key(info: EncoderInfo) -> str:
    """Path plus file version, so a replaced encoder file never serves the old model or its embeddings."""
    stat = (info.path / "config.json" if info.path.is_dir() else info.path).stat()
    return f"{info.path.resolve()}|{stat.st_size}|{stat.st_mtime}"


def image_digest(image: Image.Image) -> str:
    """Identity of a reference image by its pixels (the same picture uploaded twice hashes the same)."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ImageEncoder:
    """One loaded encoder and the preprocessing diffusers uses for it (CLIP resize, centre crop, normalise)."""

    def __init__(self, info: EncoderInfo, model: CLIPVisionModelWithProjection):
        self.info, self.model = info, model
        size = model.config.image_size
        self.processor = CLIPImageProcessor(size=size, crop_size=size)

    @property
    def key(self) -> str:
        return encoder_key(self.info)

    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def pixels(self, image: Image.Image) -> torch.Tensor:
        values = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        return values.to(device=self._param().device, dtype=self._param().dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, hidden: bool) -> torch.Tensor:
        """(n, projection_dim) image embeddings, or (n, tokens, hidden) penultimate hidden states.

        These are what diffusers' own `encode_image` feeds each kind of adapter.
        """
        if hidden:
            return self.model(pixels, output_hidden_states=True).hidden_states[-2]
        return self.model(pixels).image_embeds

    def negative(self, hidden: bool) -> torch.Tensor:
        """The unconditional side, as diffusers makes it: zeros (plain) or the encoding of a black-zero image."""
        size = self.model.config.image_size
        if not hidden:
            return torch.zeros(1, self.model.config.projection_dim, device=self._param().device,
                               dtype=self._param().dtype)
        zeros = torch.zeros(1, 3, size, size, device=self._param().device, dtype=self._param().dtype)
        return self.encode(zeros, hidden=True)
