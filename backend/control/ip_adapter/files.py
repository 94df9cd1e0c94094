"""Finding IP-Adapter and CLIP image-encoder files and telling what they are, from keys and shapes.

Every file is read through backend.models.safe_load (format by content, pickles
only with weights_only=True), so a hostile file raises CheckpointLoadError and
nothing in it runs.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from backend.control.ip_adapter.types import FAMILY_BY_CROSS_DIM, WEIGHT_SUFFIXES, EncoderInfo, IpAdapterInfo
from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_pickle_object, read_safetensors_header, read_state_dict, sniff_format

_ADAPTER_NAME = re.compile(r"ip[-_ ]?adapter", re.I)
_TO_K_IP = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")


def old_hash(path: Path) -> str:
    """A1111's short model hash (ControlNet lists show it): sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def is_shared_folder(folder: Path) -> bool:
    """Any folder but an ipadapter one (models/ControlNet, --controlnet-dir) holds other models too:
    there only files that prove to be adapters are listed, and only adapter-named pickles are opened."""
    return not _ADAPTER_NAME.fullmatch(folder.name)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = obj
    return out


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Flat `image_proj.*` / `ip_adapter.*` keys -> shapes; a nested .bin is flattened to the same names."""
    if sniff_format(path) == "safetensors":
        header, _ = read_safetensors_header(path)
        return {k: v.shape for k, v in header.items()}
    flat = _flatten(read_pickle_object(path))  # zip pickles are memory-mapped: cheap to look at
    return {k: tuple(v.shape) for k, v in flat.items() if isinstance(v, torch.Tensor)}


def identify_adapter(info: IpAdapterInfo, shapes: dict[str, tuple[int, ...]]) -> IpAdapterInfo:
    """Fill kind, embed width, family and layer count from the keys; set `error` when unsupported."""
    if not any(k.startswith("image_proj.") for k in shapes) or not any(k.startswith("ip_adapter.") for k in shapes):
        info.error = "not an IP-Adapter (no image_proj / ip_adapter weights)"
        return info
    if "image_proj.proj.weight" in shapes:
        info.kind, info.embed_dim = "plain", shapes["image_proj.proj.weight"][1]
    elif "image_proj.latents" in shapes and "image_proj.proj_in.weight" in shapes:
        info.kind, info.embed_dim = "plus", shapes["image_proj.proj_in.weight"][1]
    elif "image_proj.proj.3.weight" in shapes:
        info.kind, info.embed_dim = "full", shapes["image_proj.proj.0.weight"][1]
    else:  # FaceID projections take insightface face embeddings, which this studio does not compute
        info.error = "Face ID IP-Adapters are not supported (they need insightface face embeddings)"
        return info
    if any("lora" in k for k in shapes):
        info.error = "IP-Adapters with built-in LoRA weights (Face ID) are not supported"
        return info
    layers = sorted(int(m.group(1)) for k in shapes if (m := _TO_K_IP.match(k)))
    if not layers:
        info.error = "the ip_adapter part has no to_k_ip weights"
        return info
    info.layers = len(layers)
    info.cross_attention_dim = shapes[f"ip_adapter.{layers[0]}.to_k_ip.weight"][1]
    info.family = FAMILY_BY_CROSS_DIM.get(info.cross_attention_dim)
    return info


def scan_adapters(folders: list[Path], known: dict[Path, tuple[tuple, IpAdapterInfo]]) -> list[IpAdapterInfo]:
    """Adapters in `folders` (sorted by name); `known` remembers files by (size, mtime) between scans."""
    found: list[IpAdapterInfo] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        shared = is_shared_folder(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES):
            if (path.parent / "config.json").is_file():
                continue  # a transformers model folder (h94's image_encoder in a cloned repo), not an adapter
            named = bool(_ADAPTER_NAME.search(path.name))
            if shared and not named and path.suffix.lower() != ".safetensors":
                continue  # never unpickle every multi-GB ControlNet just to look at it
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime)
            cached = known.get(path)
            if cached and cached[0] == stamp:
                info = cached[1]
            else:
                info = IpAdapterInfo(path=path, name=path.relative_to(folder).as_posix())
                try:
                    identify_adapter(info, _shapes(path))
                    info.shorthash = old_hash(path)
                except (CheckpointLoadError, OSError) as exc:
                    info.error = str(exc)
                known[path] = (stamp, info)
            if shared and info.error and not named:
                continue  # a ControlNet, not a broken adapter
            found.append(info)
    return found


def read_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}}, the form diffusers' load_ip_adapter takes as a dict."""
    if sniff_format(path) == "safetensors":
        flat: dict[str, Any] = read_state_dict(path)[0]
    else:
        flat = _flatten(read_pickle_object(path))
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in parts and isinstance(value, torch.Tensor):
            parts[head][rest] = value
    if not parts["image_proj"] or not parts["ip_adapter"]:
        raise CheckpointLoadError(f"{path.name}: not an IP-Adapter (no image_proj / ip_adapter weights)")
    return parts


# --------------------------------------------------------------------------- CLIP image encoders


def encoder_weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers folder (one file, or the shards its index names)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    raise CheckpointLoadError(f"{folder.name}: no model.safetensors or pytorch_model.bin in the folder")


def folder_config(folder: Path) -> dict:
    """The vision part of a folder's config.json (a full CLIPModel config nests it under vision_config)."""
    config = json.loads((folder / "config.json").read_text())
    if "vision_config" in config:
        config = {**config["vision_config"], "projection_dim": config.get("projection_dim", 512)}
    return config


def encoder_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if sniff_format(path) == "safetensors":
        header, _ = read_safetensors_header(path)
        return {k: v.shape for k, v in header.items()}
    obj = read_pickle_object(path)
    return {k: tuple(v.shape) for k, v in _flatten(obj).items() if isinstance(v, torch.Tensor)}


def scan_encoders(folders: list[Path], known: dict[Path, tuple[tuple, EncoderInfo]]) -> list[EncoderInfo]:
    from backend.control.ip_adapter.encoder import config_from_shapes  # encoder.py imports this module

    found: list[EncoderInfo] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            is_model_folder = path.is_dir() and (path / "config.json").is_file()
            if not is_model_folder and not (path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES):
                continue
            stat = (path / "config.json" if is_model_folder else path).stat()
            stamp = (stat.st_size, stat.st_mtime)
            if (cached := known.get(path)) and cached[0] == stamp:
                found.append(cached[1])
                continue
            info = EncoderInfo(path=path, name=path.name)
            try:
                config = folder_config(path) if is_model_folder else config_from_shapes(encoder_shapes(path), path)
                info.hidden_size, info.projection_dim = int(config["hidden_size"]), int(config["projection_dim"])
                info.image_size = int(config.get("image_size", 224))
            except (CheckpointLoadError, OSError, ValueError, KeyError) as exc:
                info.error = str(exc)
            known[path] = (stamp, info)
            found.append(info)
    return found
