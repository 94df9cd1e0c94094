"""Tell what a file in models/ControlNet is, from its keys and shapes (never its name).

Safetensors files are identified from their header alone; pickles are opened
with the safe loader (weights only, no code runs). The same `identify` serves
the listing and the loader, so a file is never listed as one thing and loaded
as another.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_pickle_object, read_safetensors_header, sniff_format
from backend.models.types import ModelFamily

from .types import UnsupportedControlNet

LDM_PREFIX = "control_model."
FOLDER_CONFIG = "config.json"
# What diffusers' save_pretrained writes, in the order diffusers itself prefers them.
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                  "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def old_model_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits.

    sd-webui-controlnet shows it in its model list ("control_v11p_sd15_canny [d14c016b]");
    a file under 1 MiB hashes the empty string, as A1111 does.
    """
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@dataclass(frozen=True)
class Identity:
    kind: str  # "controlnet" or "ip-adapter"
    layout: str | None = None  # "ldm" (lllyasviel's keys), "diffusers" (diffusers' keys) or "diffusers-folder"
    family: ModelFamily | None = None
    cross_attention_dim: int | None = None
    linear_projection: bool = False


def strip_prefix(sd: Mapping) -> dict:
    """lllyasviel's files prefix every key with `control_model.` (the 1.0 files also hold a whole SD model)."""
    if any(k.startswith(LDM_PREFIX) for k in sd):
        return {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
    return dict(sd)


def identify(sd: Mapping) -> Identity:
    """What a flat mapping of key -> tensor (or shape) holds; raises UnsupportedControlNet with the reason."""
    keys = sd.keys()
    if _has(keys, "image_proj.") and _has(keys, "ip_adapter."):
        return Identity("ip-adapter", family=_ip_adapter_family(sd))
    if "lora_controlnet" in keys:  # Stability's Control-LoRA marks itself with this empty tensor
        raise UnsupportedControlNet("this is a Control-LoRA (low-rank ControlNet); not supported yet")
    body = strip_prefix(sd)
    if "input_hint_block.0.weight" in body and _has(body, "zero_convs."):
        layout = "ldm"
    elif "controlnet_cond_embedding.conv_in.weight" in body and _has(body, "controlnet_down_blocks."):
        layout = "diffusers"
    else:
        raise UnsupportedControlNet(_why_not(keys))
    sdxl = ("label_emb.0.0.weight" if layout == "ldm" else "add_embedding.linear_1.weight") in body
    cross = next((tuple(v.shape)[1] for k, v in body.items() if k.endswith("attn2.to_k.weight")), None)
    if cross is None:
        raise UnsupportedControlNet("this ControlNet has no cross-attention layers; not supported")
    proj_in = next((v for k, v in body.items() if k.endswith(".proj_in.weight")), None)
    linear = proj_in is not None and len(tuple(proj_in.shape)) == 2
    return Identity("controlnet", layout, detect_family(sdxl, cross, linear), cross, linear)


def detect_family(sdxl: bool, cross_dim: int, linear_projection: bool) -> ModelFamily:
    """SDXL ControlNets embed the size/crop conditioning (label_emb); SD2 attends to 1024-wide OpenCLIP
    states through linear projections, SD1 to 768-wide CLIP states through 1x1 convolutions."""
    if sdxl:
        return ModelFamily.SDXL
    if cross_dim in (768, 1024):
        return ModelFamily.SD1 if cross_dim == 768 else ModelFamily.SD2
    return ModelFamily.SD2 if linear_projection else ModelFamily.SD1


def _has(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _ip_adapter_family(sd: Mapping) -> ModelFamily | None:
    # to_k_ip projects the text encoder's width: 768 (SD1), 1024 (SD2), 2048 (SDXL)
    width = next((tuple(v.shape)[1] for k, v in sd.items() if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")),
                 None)
    return {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL}.get(width)


def _why_not(keys) -> str:
    if _has(keys, "lllite_"):
        return "this is a ControlNet-LLLite file (kohya); not supported yet"
    if _has(keys, "body.") or _has(keys, "adapter.body."):
        return "this looks like a T2I-Adapter, not a ControlNet; not supported yet"
    if _has(keys, "model.diffusion_model."):
        return "this is a Stable Diffusion checkpoint: put it in models/Stable-diffusion"
    if _has(keys, "lora_unet_") or any(".lora_" in k for k in keys):
        return "this is a LoRA: put it in models/Lora"
    return "not a ControlNet (no control_model.*, input_hint_block.* or controlnet_cond_embedding.* keys)"


# --------------------------------------------------------------------------- reading for the listing


def read_keys(path: Path) -> dict[str, Any]:
    """Keys -> tensors or shapes of a weights file, flat, as cheaply as the format allows."""
    if sniff_format(path) == "safetensors":
        return read_safetensors_header(path)[0]
    return flatten_pickle(read_pickle_object(path), path)


def flatten_pickle(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A pickle's tensors under dotted keys: unwraps {"state_dict": ...} and IP-Adapter's
    {"image_proj": {...}, "ip_adapter": {...}} nesting."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointLoadError(f"{path.name}: holds a {type(obj).__name__}, not a dictionary of weights")
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            flat[str(key)] = value
        elif isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)}
    if not flat:
        raise CheckpointLoadError(f"{path.name}: contains no tensors")
    return flat


def folder_weights(folder: Path) -> Path | None:
    return next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)


def read_folder_config(folder: Path) -> dict:
    """A diffusers ControlNet folder's config.json; raises UnsupportedControlNet for other folders."""
    try:
        config = json.loads((folder / FOLDER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedControlNet(f"unreadable {FOLDER_CONFIG} ({exc})") from None
    cls = config.get("_class_name") if isinstance(config, dict) else None
    if cls != "ControlNetModel":
        raise UnsupportedControlNet(f"a diffusers {cls or 'unknown'} folder, not a ControlNetModel; not supported")
    return config


def identify_folder(folder: Path) -> Identity:
    config = read_folder_config(folder)
    if folder_weights(folder) is None:
        if (folder / (FOLDER_WEIGHTS[0] + ".index.json")).is_file():
            raise UnsupportedControlNet("sharded weights (.index.json) are not supported yet")
        raise UnsupportedControlNet(f"no weights file ({' or '.join(FOLDER_WEIGHTS)}) beside {FOLDER_CONFIG}")
    cross = config.get("cross_attention_dim") or 0
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    family = detect_family(config.get("addition_embed_type") == "text_time", int(cross),
                           bool(config.get("use_linear_projection")))
    return Identity("controlnet", "diffusers-folder", family, int(cross), bool(config.get("use_linear_projection")))
