"""Build a diffusers ControlNetModel from a ControlNet's weights, offline.

The config comes from the shipped family UNet config (what shapes cannot tell:
attention heads, norm settings) plus the file's own shapes (widths, depths,
hint encoder). lllyasviel-layout keys go through diffusers' own
`convert_controlnet_checkpoint`, with two gaps of diffusers 0.42 filled here.
The model is made on the meta device and the tensors are assigned in place,
strictly: every weight must find its layer and every layer its weight.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Mapping

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

from backend.models import architecture as arch
from backend.models.loader import assemble
from backend.models.safe_load import read_state_dict
from backend.models.types import ModelFamily

from .scan import Identity, folder_weights, identify, identify_folder, read_folder_config, strip_prefix
from .types import UnsupportedControlNet

_CONTROLNET_ARGS = frozenset(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
_DIFFUSERS_HINT_OUT = 14  # the hint conv diffusers' converter takes as conv_out (the 16-32-96-256 encoder)
_ADD_EMBEDDING = DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"]  # add_embedding.* <- label_emb.*
_GLOBAL_POOL = re.compile(r"^\s*global_average_pooling:\s*true\s*$", re.IGNORECASE | re.MULTILINE)


def global_pool_hint(path: Path) -> bool:
    """sd-webui-controlnet reads `<model>.yaml` beside the file; shuffle's says `global_average_pooling: True`."""
    sidecar = path.with_suffix(".yaml")
    return sidecar.is_file() and bool(_GLOBAL_POOL.search(sidecar.read_text(errors="replace")))


def load_file(path: Path, dtype: torch.dtype) -> tuple[ControlNetModel, ModelFamily]:
    sd, _ = read_state_dict(path)  # CheckpointLoadError for unsafe or damaged files
    return build_controlnet(sd, dtype, global_pool=global_pool_hint(path))


def load_folder(folder: Path, dtype: torch.dtype) -> tuple[ControlNetModel, ModelFamily]:
    """A diffusers folder: its own config.json, its weights read by the safe loader (not by from_pretrained)."""
    identity = identify_folder(folder)
    sd, _ = read_state_dict(folder_weights(folder))
    return _assemble(read_folder_config(folder), sd, dtype), identity.family


def build_controlnet(sd: Mapping[str, torch.Tensor], dtype: torch.dtype,
                     global_pool: bool = False) -> tuple[ControlNetModel, ModelFamily]:
    identity = identify(sd)
    if identity.kind != "controlnet":
        raise UnsupportedControlNet("this is an IP-Adapter, not a ControlNet")
    body = strip_prefix(sd)
    try:
        if identity.layout == "ldm":
            config = config_from_ldm(body, identity)
            state = ldm_to_diffusers(body, config)
        else:
            config, state = config_from_diffusers(body, identity), body
    except arch.UnsupportedCheckpoint as exc:
        raise UnsupportedControlNet(str(exc)) from None
    except (KeyError, IndexError) as exc:
        raise UnsupportedControlNet(f"incomplete ControlNet: no {exc} weight") from None
    config["global_pool_conditions"] = global_pool
    return _assemble(config, state, dtype), identity.family


def _assemble(config: dict, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> ControlNetModel:
    try:
        return assemble(ControlNetModel, config, dict(state), dtype)
    except (RuntimeError, ValueError, TypeError) as exc:  # missing, unexpected or mis-shaped weights
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])[:400]
        raise UnsupportedControlNet(f"the weights do not fit the ControlNet their shapes describe ({detail})") from None


# --------------------------------------------------------------------------- lllyasviel's layout


def config_from_ldm(body: Mapping, identity: Identity) -> dict:
    # unet_layout reads a UNet's encoder half; a ControlNet is exactly that, so lend it the UNet prefix
    unet_like = {arch.UNET + k: v for k, v in body.items() if k.startswith(("input_blocks.", "middle_block."))}
    hint = sorted(int(k.split(".")[1]) for k in body if k.startswith("input_hint_block.") and k.endswith(".weight"))
    return _config(identity, arch.unet_layout(unet_like), body, "input_blocks.0.0.weight",
                   [f"input_hint_block.{i}.weight" for i in hint], "label_emb.0.0.weight")


def ldm_to_diffusers(body: Mapping[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    state = convert_controlnet_checkpoint(dict(body), config)
    # diffusers 0.42's converter leaves out SDXL's size/crop embedding (label_emb -> add_embedding) ...
    state |= {new: body[old] for new, old in _ADD_EMBEDDING.items() if old in body}
    # ... and takes input_hint_block.14 as the last hint conv, whatever the encoder's length.
    hint = sorted(int(k.split(".")[1]) for k in body if k.startswith("input_hint_block.") and k.endswith(".weight"))
    if hint[-1] != _DIFFUSERS_HINT_OUT:
        state = {k: v for k, v in state.items() if not k.startswith("controlnet_cond_embedding.")}
        names = ["conv_in", *(f"blocks.{j}" for j in range(len(hint) - 2)), "conv_out"]
        for name, index in zip(names, hint):
            for part in ("weight", "bias"):
                state[f"controlnet_cond_embedding.{name}.{part}"] = body[f"input_hint_block.{index}.{part}"]
    missing = sorted(k for k, v in state.items() if v is None)  # the converter fills absent keys with None
    if missing:
        raise UnsupportedControlNet(f"incomplete ControlNet: no weights for {', '.join(missing[:3])}")
    used = {id(v) for v in state.values()}
    unused = sorted(k for k, v in body.items() if id(v) not in used)
    if unused:
        raise UnsupportedControlNet(f"{len(unused)} weights fit no ControlNet layer (e.g. {unused[0]})")
    return state


# --------------------------------------------------------------------------- diffusers' keys, no config


def config_from_diffusers(body: Mapping, identity: Identity) -> dict:
    layout = arch.UNetLayout()
    levels = sorted({int(k.split(".")[1]) for k in body if k.startswith("down_blocks.")})
    for i in levels:
        resnets = sorted({int(k.split(".")[3]) for k in body if k.startswith(f"down_blocks.{i}.resnets.")})
        layout.block_out_channels.append(_shape(body, f"down_blocks.{i}.resnets.0.conv2.weight")[0])
        layout.down_depths.append([_depth(body, f"down_blocks.{i}.attentions.{j}.") for j in resnets])
    counts = {len(d) for d in layout.down_depths}
    if len(counts) != 1:
        raise UnsupportedControlNet(f"levels have different resnet counts {sorted(counts)}; not supported yet")
    layout.layers_per_block = counts.pop()
    layout.mid_depth = _depth(body, "mid_block.attentions.0.") if any(k.startswith("mid_block.") for k in body) else None
    blocks = len({k for k in body if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight")})
    hint = ["controlnet_cond_embedding.conv_in.weight",
            *(f"controlnet_cond_embedding.blocks.{j}.weight" for j in range(blocks)), "controlnet_cond_embedding.conv_out.weight"]
    return _config(identity, layout, body, "conv_in.weight", hint, "add_embedding.linear_1.weight")


_TRANSFORMER = re.compile(r"transformer_blocks\.(\d+)\.")


def _depth(body: Mapping, prefix: str) -> int:
    found = {int(m.group(1)) for k in body if k.startswith(prefix) for m in [_TRANSFORMER.match(k[len(prefix):])] if m}
    return max(found) + 1 if found else 0


def _shape(body: Mapping, key: str) -> tuple[int, ...]:
    return tuple(body[key].shape)


# --------------------------------------------------------------------------- the config


def _config(identity: Identity, layout: arch.UNetLayout, body: Mapping, conv_in: str, hint: list[str],
            embed: str) -> dict:
    family = identity.family
    base = arch.family_config(family, "unet")
    config = {k: v for k, v in base.items() if k in _CONTROLNET_ARGS}
    channels = layout.block_out_channels
    if layout.mid_depth is None:
        raise UnsupportedControlNet("this ControlNet has no middle block; not supported yet")
    config.update(in_channels=_shape(body, conv_in)[1], block_out_channels=channels,
                  layers_per_block=layout.layers_per_block, mid_block_type="UNetMidBlock2DCrossAttn",
                  down_block_types=["CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for d in layout.down_depths],
                  cross_attention_dim=identity.cross_attention_dim, use_linear_projection=identity.linear_projection)
    if family is not ModelFamily.SD1:  # SD1 has 8 heads everywhere (the family config); the others 64-wide heads
        config["attention_head_dim"] = [max(1, c // arch.UNET_HEAD_DIM) for c in channels]

    # diffusers builds the middle block from the last entry, so a last level without attention carries the
    # middle block's depth; other levels without attention ignore theirs (1, as diffusers' configs say).
    mid, last = layout.mid_depth, len(layout.down_depths) - 1
    depths = [d if any(d) else [mid if i == last else 1] * len(d) for i, d in enumerate(layout.down_depths)]
    if any(layout.down_depths[-1]) and layout.down_depths[-1][0] != mid:
        raise UnsupportedControlNet("the middle block's transformer depth differs from the last level's; not supported")
    uniform = all(len(set(d)) == 1 for d in depths)
    config["transformer_layers_per_block"] = [d[0] for d in depths] if uniform else depths

    # The hint encoder: conv_in, then pairs (same width, strided to the next width), then conv_out.
    shapes = [_shape(body, k) for k in hint]
    inner = shapes[1:-1]
    if len(inner) % 2:
        raise UnsupportedControlNet(f"the hint encoder has {len(shapes)} convolutions; expected an even number")
    config["conditioning_channels"] = shapes[0][1]
    config["conditioning_embedding_out_channels"] = [shapes[0][0], *(s[0] for s in inner[1::2])]

    if family is ModelFamily.SDXL:
        embed_in = _shape(body, embed)[1]
        config["projection_class_embeddings_input_dim"] = embed_in
        config["addition_time_embed_dim"] = _time_embed_dim(embed_in, base)
    return config


def _time_embed_dim(embed_in: int, base: dict) -> int:
    """Width of each of SDXL's six size/crop embeddings; embed_in = pooled text width + 6 * this."""
    if embed_in == base["projection_class_embeddings_input_dim"]:
        return base["addition_time_embed_dim"]  # every SDXL-family base model (2816 = 1280 + 6 * 256)
    # The pooled width is not in the file. Sinusoidal widths are powers of two: take the largest that
    # leaves room for a pooled embedding (it gives 256 for real SDXL too).
    dim = 1
    while embed_in - 6 * dim * 2 > 0:
        dim *= 2
    return dim
