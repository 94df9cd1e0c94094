"""Upscaler and face-restoration networks from strangers' files, through spandrel.

The file is read by the studio's safe loader (format by content, pickles only
with weights_only=True); spandrel sees only the resulting tensors and picks
the architecture from their key names and shapes. spandrel-extra-arches adds
CodeFormer and others; they go into a registry of our own rather than into
spandrel's shared one, so importing this module changes no library state.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict


class ExtrasModelError(ValueError):
    """A file in an upscaler or face-restoration folder that cannot serve; the message says why."""


@lru_cache(maxsize=1)
def studio_registry():
    """spandrel's architectures plus the extra ones (CodeFormer...), built once per process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices from some architectures
        from spandrel import MAIN_REGISTRY, ArchRegistry
        from spandrel_extra_arches import EXTRA_REGISTRY
    registry = ArchRegistry()
    registry.add(*MAIN_REGISTRY.architectures(), ignore_duplicates=True)
    registry.add(*EXTRA_REGISTRY.architectures(), ignore_duplicates=True)
    return registry


def unwrap(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bare weights: DataParallel's `module.` prefix off. spandrel unwraps `params_ema` / `params` itself
    when handed the whole pickle, but our safe loader already returns flat tensors, so nested ones come here."""
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Flat tensors of a .pth / .safetensors, unwrapping Real-ESRGAN's `params_ema` (preferred) or `params`."""
    from backend.models.safe_load import read_pickle_object, sniff_format

    try:
        kind = sniff_format(path)
        if kind == "safetensors":
            return unwrap(read_state_dict(path)[0])
        obj = read_pickle_object(path, kind)
    except CheckpointLoadError as exc:
        raise ExtrasModelError(str(exc)) from None
    for wrapper in ("params_ema", "params", "state_dict", "model"):  # BasicSR, then Lightning-style wrappers
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ExtrasModelError(f"{path.name}: holds a {type(obj).__name__}, not a dictionary of weights")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExtrasModelError(f"{path.name}: contains no tensors")
    return unwrap(tensors)


def what_else(keys) -> str | None:
    """What a file that spandrel does not know is, when it is one of the studio's other kinds."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("model.diffusion_model.") or has("first_stage_model."):
        return "this is a Stable Diffusion checkpoint: put it in models/Stable-diffusion"
    if has("lora_unet_") or has("lora_te") or any(".lora_" in k or ".lora_A." in k for k in keys):
        return "this is a LoRA: put it in models/Lora"
    if has("control_model.") or has("controlnet_cond_embedding."):
        return "this is a ControlNet: put it in models/ControlNet"
    if has("encoder.down.") and has("decoder.up."):
        return "this is a VAE: put it in models/VAE"
    if "string_to_param" in keys or "emb_params" in keys:
        return "this is a textual-inversion embedding: put it in models/embeddings"
    if has("image_encoder.") and has("mask_decoder."):
        return "this is a Segment Anything model: put it in models/sam"
    return None


def load_image_model(path: Path, device: torch.device | str = "cpu"):
    """A spandrel ImageModelDescriptor in eval mode on `device` (float32); ExtrasModelError if it cannot be."""
    state_dict = read_weights(path)
    return model_from_state_dict(state_dict, path.name, device)


def model_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str, device: torch.device | str = "cpu"):
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descriptor = ModelLoader(registry=studio_registry()).load_from_state_dict(dict(state_dict))
    except UnsupportedModelError:
        other = what_else(state_dict.keys())
        raise ExtrasModelError(f"{source}: {other or 'not an upscaler or face-restoration model spandrel knows'}") \
            from None
    except (KeyError, RuntimeError, ValueError, TypeError, AssertionError) as exc:  # a known layout, wrong tensors
        raise ExtrasModelError(f"{source}: looks like a known architecture but its tensors do not fit "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ExtrasModelError(f"{source}: is a {descriptor.architecture.name} model, which does not take one "
                               "picture and give one back")
    return descriptor.to(device).eval()
