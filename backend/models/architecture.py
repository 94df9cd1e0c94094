"""Tell what an original-layout (A1111/LDM) checkpoint is, from its keys and shapes.

File names lie; keys and shapes do not. `detect_variant` names the family and
variant, and the `*_config` functions build diffusers configs: the shipped
family config (configs/<family>/) supplies what shapes cannot tell (attention
heads, scheduler, scaling factor), the checkpoint's own shapes supply the rest.
So full-size checkpoints, distilled ones with fewer blocks (SSD-1B, Vega) and
the tiny test fixtures all go through the same code.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from backend.models.types import ModelFamily, ModelVariant

CONFIG_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = CONFIG_DIR / "tokenizer"

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD1 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
CLIP_XL = "conditioner.embedders.0.transformer."
OPENCLIP_XL = "conditioner.embedders.1.model."
OPENCLIP_REFINER = "conditioner.embedders.0.model."
V_PRED_MARKER = "v_pred"  # empty tensors some files carry to say how they were trained
ZTSNR_MARKER = "ztsnr"

# Every CLIP text encoder in the SD families uses 64-wide attention heads.
TEXT_HEAD_DIM = 64
# SD2 and SDXL UNets use 64-wide heads; SD1 uses a fixed count of 8 heads.
UNET_HEAD_DIM = 64


class UnsupportedCheckpoint(ValueError):
    """The file is readable but is not a checkpoint this studio can run."""


@lru_cache(maxsize=None)
def family_config(family: ModelFamily, part: str) -> dict:
    return json.loads((CONFIG_DIR / family.value / f"{part}.json").read_text())


def _has_prefix(keys: Mapping, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


# --------------------------------------------------------------------------- detection


def resolution_from_metadata(metadata: Mapping[str, str]) -> int | None:
    """SAI model-spec files state their training size as "modelspec.resolution": "1024x1024"."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", metadata.get("modelspec.resolution", ""))
    return int(match.group(1)) if match and match.group(1) == match.group(2) else None


def detect_variant(sd: Mapping, prediction_hint: str | None = None, resolution: int | None = None) -> ModelVariant:
    """Family and variant of a checkpoint's state dict; raises UnsupportedCheckpoint with the reason.

    `prediction_hint` is "v_prediction" or "epsilon" when the user said so (a
    sidecar .yaml, as A1111 reads); SD2 otherwise defaults to epsilon.
    """
    keys = sd.keys()
    if not _has_prefix(keys, UNET):
        raise UnsupportedCheckpoint(_why_not_a_checkpoint(keys))
    in_key = UNET + "input_blocks.0.0.weight"
    if in_key not in sd:
        raise UnsupportedCheckpoint("the UNet has no input convolution (input_blocks.0.0); not a Stable Diffusion UNet")
    in_channels = _shape(sd, in_key)[1]

    if _has_prefix(keys, OPENCLIP_XL):
        family = ModelFamily.SDXL
    elif _has_prefix(keys, OPENCLIP_REFINER):
        family = ModelFamily.SDXL_REFINER
    elif _has_prefix(keys, OPENCLIP_SD2):
        family = ModelFamily.SD2
    elif _has_prefix(keys, CLIP_SD1):
        family = ModelFamily.SD1
    else:
        raise UnsupportedCheckpoint(
            "no text encoder found (neither CLIP cond_stage_model nor SDXL conditioner keys); "
            "UNet-only files are not supported"
        )
    if not _has_prefix(keys, VAE):
        raise UnsupportedCheckpoint("no VAE found (first_stage_model.* keys); checkpoints without a VAE are not supported yet")

    if in_channels == 9:
        inpainting = True
    elif in_channels == 4:
        inpainting = False
    elif in_channels == 8:
        raise UnsupportedCheckpoint("instruct-pix2pix checkpoints (8 input channels) are not supported yet")
    else:
        raise UnsupportedCheckpoint(f"the UNet takes {in_channels} input channels; expected 4 (or 9 for inpainting)")

    # v-prediction checkpoints of any family may carry empty marker tensors "v_pred" (and "ztsnr" when trained
    # on a zero-terminal-SNR schedule), as ComfyUI and Forge read them; a sidecar .yaml, the user's word, wins.
    prediction = "v_prediction" if V_PRED_MARKER in keys else "epsilon"
    if family is ModelFamily.SD2 and prediction_hint:
        prediction = prediction_hint
    distilled = _distilled_name(sd) if family is ModelFamily.SDXL else None
    return ModelVariant(family=family, prediction_type=prediction, inpainting=inpainting, distilled=distilled,
                        resolution=resolution, zero_terminal_snr=ZTSNR_MARKER in keys)


def _why_not_a_checkpoint(keys) -> str:
    if _has_prefix(keys, "lora_unet_") or _has_prefix(keys, "lora_te") or any(".lora_" in k for k in keys):
        return "this is a LoRA, not a checkpoint: put it in models/Lora"
    if _has_prefix(keys, "encoder.down.") or _has_prefix(keys, "decoder.up."):
        return "this is a VAE, not a checkpoint: put it in models/VAE"
    if "string_to_param" in keys or "emb_params" in keys or "clip_l" in keys:
        return "this is a textual-inversion embedding: put it in models/embeddings"
    if _has_prefix(keys, "control_model.") or _has_prefix(keys, "controlnet_cond_embedding."):
        return "this is a ControlNet: put it in models/ControlNet"
    if _has_prefix(keys, "down_blocks.") or _has_prefix(keys, "conv_in."):
        return "this is a single diffusers component (a bare UNet), not a full checkpoint"
    return "no Stable Diffusion UNet found (no model.diffusion_model.* keys)"


# SDXL UNets differ in transformer depths only: per input resnet, per output resnet (deepest level
# first, as output_blocks run) and in the middle block (0: one resnet, no attention). Depths as
# ComfyUI's model_detection lists them; widths are not compared, so tiny test UNets match too.
_SDXL_DEPTHS: dict[str | None, tuple] = {
    None: (((0, 0), (2, 2), (10, 10)), ((10, 10, 10), (2, 2, 2), (0, 0, 0)), 10),
    "SSD-1B": (((0, 0), (2, 2), (4, 4)), ((4, 4, 10), (2, 1, 1), (0, 0, 0)), 0),
    "Vega": (((0, 0), (1, 1), (2, 2)), ((2, 2, 2), (1, 1, 1), (0, 0, 0)), 0),
}


def _distilled_name(sd: Mapping) -> str | None:
    """None for SDXL base, the distilled model's name, or "reduced SDXL" for another layout."""
    layout = unet_layout(sd)
    depths = (tuple(map(tuple, layout.down_depths)), tuple(map(tuple, layout.up_depths)), layout.mid_depth)
    for name, known in _SDXL_DEPTHS.items():
        if depths == known:
            return name
    return "reduced SDXL"


# --------------------------------------------------------------------------- UNet layout


class UNetLayout:
    """The block structure of an LDM UNet, read from its keys."""

    def __init__(self) -> None:
        self.block_out_channels: list[int] = []
        self.down_depths: list[list[int]] = []  # transformer blocks per resnet, per level (0 = no attention)
        self.up_depths: list[list[int]] = []
        self.layers_per_block: int = 0
        # transformer blocks in the middle block; 0: a lone resnet (SSD-1B, Vega); None: no middle block
        self.mid_depth: int | None = None


_INPUT_RE = re.compile(r"input_blocks\.(\d+)\.(\d+)\.")
_OUTPUT_RE = re.compile(r"output_blocks\.(\d+)\.(\d+)\.")
_DEPTH_RE = re.compile(r"transformer_blocks\.(\d+)\.")


def _depth(sd: Mapping, prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if k.startswith(prefix) for m in [_DEPTH_RE.search(k[len(prefix):])] if m}
    return max(found) + 1 if found else 0


def unet_layout(sd: Mapping) -> UNetLayout:
    layout = UNetLayout()
    inputs: dict[int, set[int]] = defaultdict(set)
    outputs: dict[int, set[int]] = defaultdict(set)
    for k in sd:
        if not k.startswith(UNET):
            continue
        rest = k[len(UNET):]
        if m := _INPUT_RE.match(rest):
            inputs[int(m.group(1))].add(int(m.group(2)))
        elif m := _OUTPUT_RE.match(rest):
            outputs[int(m.group(1))].add(int(m.group(2)))

    level_resnets: list[int] = []
    depths: list[int] = []
    for i in range(1, max(inputs) + 1):
        if UNET + f"input_blocks.{i}.0.op.weight" in sd:  # a downsampler closes the level
            layout.down_depths.append(depths)
            level_resnets.append(len(depths))
            depths = []
            continue
        if not depths:  # first resnet of a level sets the level's width
            layout.block_out_channels.append(_shape(sd, UNET + f"input_blocks.{i}.0.out_layers.3.weight")[0])
        depths.append(_depth(sd, UNET + f"input_blocks.{i}.1."))
    layout.down_depths.append(depths)
    level_resnets.append(len(depths))
    if len(set(level_resnets)) != 1:
        raise UnsupportedCheckpoint(f"UNet levels have different resnet counts {level_resnets}; not supported yet")
    layout.layers_per_block = level_resnets[0]

    per_up = layout.layers_per_block + 1
    for level in range(len(layout.down_depths)):
        layout.up_depths.append([_depth(sd, UNET + f"output_blocks.{level * per_up + j}.1.") for j in range(per_up)])

    if _has_prefix(sd, UNET + "middle_block."):
        # resnet, transformer, resnet; or (ComfyUI's transformer_depth_middle -1) middle_block.0 alone
        layout.mid_depth = _depth(sd, UNET + "middle_block.1.")
        extra = (UNET + "middle_block.1.", UNET + "middle_block.2.")
        if layout.mid_depth == 0 and any(k.startswith(extra) for k in sd):
            raise UnsupportedCheckpoint("the UNet's middle block has several resnets but no attention; not supported")
    return layout


def unet_config(sd: Mapping, variant: ModelVariant) -> dict:
    config = dict(family_config(variant.family, "unet"))
    layout = unet_layout(sd)
    channels = layout.block_out_channels
    config["block_out_channels"] = channels
    config["layers_per_block"] = layout.layers_per_block
    config["in_channels"] = _shape(sd, UNET + "input_blocks.0.0.weight")[1]
    config["out_channels"] = _shape(sd, UNET + "out.2.weight")[0]
    config["down_block_types"] = ["CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for d in layout.down_depths]
    # output_blocks run deepest level first, as diffusers' up_blocks do
    config["up_block_types"] = ["CrossAttnUpBlock2D" if any(d) else "UpBlock2D" for d in layout.up_depths]

    attn_key = next((k for k in sd if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    if attn_key is None:
        raise UnsupportedCheckpoint("the UNet has no cross-attention layers")
    config["cross_attention_dim"] = _shape(sd, attn_key)[1]
    proj_in = next(k for k in sd if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    config["use_linear_projection"] = len(_shape(sd, proj_in)) == 2
    if variant.family is not ModelFamily.SD1:
        config["attention_head_dim"] = [max(1, c // UNET_HEAD_DIM) for c in channels]

    # Transformer depth per level (per resnet when it varies). Levels without attention ignore theirs,
    # except that diffusers' middle block takes its depth from the last entry.
    mid = layout.mid_depth or 1
    last = len(layout.down_depths) - 1
    down = [d if any(d) else [mid if i == last else 1] * len(d) for i, d in enumerate(layout.down_depths)]
    uniform = all(len(set(d)) == 1 for d in down) and all(
        len(set(u)) == 1 and (not any(u) or u[0] == d[0]) for d, u in zip(down, reversed(layout.up_depths)))
    if uniform:
        config["transformer_layers_per_block"] = [d[0] for d in down]
        config.pop("reverse_transformer_layers_per_block", None)
    else:  # e.g. SSD-1B: up blocks 4, 4, 10 / 2, 1, 1 against down blocks 4, 4 / 2, 2
        config["transformer_layers_per_block"] = down
        config["reverse_transformer_layers_per_block"] = [u if any(u) else [1] * len(u) for u in layout.up_depths]
    if layout.mid_depth and any(layout.down_depths[-1]) and layout.down_depths[-1][0] != layout.mid_depth:
        raise UnsupportedCheckpoint("the middle block's transformer depth differs from the last level's; not supported yet")
    # diffusers' UNetMidBlock2D with no attention is exactly one resnet: middle_block.0 -> mid_block.resnets.0
    config["mid_block_type"] = (None if layout.mid_depth is None else
                                "UNetMidBlock2DCrossAttn" if layout.mid_depth else "UNetMidBlock2D")

    if variant.family.is_sdxl:
        pooled = _pooled_dim(sd, variant.family)
        embed_in = _shape(sd, UNET + "label_emb.0.0.weight")[1]
        time_ids = 6 if variant.family is ModelFamily.SDXL else 5
        config["projection_class_embeddings_input_dim"] = embed_in
        config["addition_time_embed_dim"] = (embed_in - pooled) // time_ids
    if variant.family is ModelFamily.SD2 and variant.prediction_type == "v_prediction":
        config["upcast_attention"] = True  # SD2.1-v needs fp32 attention, as its own config says
        config["sample_size"] = 96
    return config


def _pooled_dim(sd: Mapping, family: ModelFamily) -> int:
    prefix = OPENCLIP_XL if family is ModelFamily.SDXL else OPENCLIP_REFINER
    return _shape(sd, prefix + "text_projection")[1]


# --------------------------------------------------------------------------- VAE


def vae_config(sd: Mapping, variant: ModelVariant, prefix: str = VAE) -> dict:
    config = dict(family_config(variant.family, "vae"))
    levels = sorted({int(k[len(prefix):].split(".")[2]) for k in sd if k.startswith(prefix + "encoder.down.")})
    blocks = {int(k[len(prefix):].split(".")[4]) for k in sd if k.startswith(prefix + "encoder.down.0.block.")}
    config["block_out_channels"] = [_shape(sd, prefix + f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    config["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    config["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    config["layers_per_block"] = len(blocks)
    config["latent_channels"] = _shape(sd, prefix + "quant_conv.weight")[0] // 2
    return config


# --------------------------------------------------------------------------- text encoders


def _text_config(base: dict, hidden: int, intermediate: int, layers: int, positions: int, vocab: int,
                 projection: int | None = None) -> dict:
    config = dict(base, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // TEXT_HEAD_DIM), max_position_embeddings=positions,
                  vocab_size=vocab)
    if projection is not None:
        config["projection_dim"] = projection
    return config


def clip_config(sd: Mapping, family: ModelFamily, prefix: str) -> dict:
    """Config of an OpenAI-CLIP-layout text encoder (SD1, SDXL's first)."""
    layers = {int(m.group(1)) for k in sd if k.startswith(prefix) for m in [re.search(r"encoder\.layers\.(\d+)\.", k)] if m}
    body = prefix + ("text_model." if prefix + "text_model.embeddings.token_embedding.weight" in sd else "")
    vocab, hidden = _shape(sd, body + "embeddings.token_embedding.weight")
    positions = _shape(sd, body + "embeddings.position_embedding.weight")[0]
    intermediate = _shape(sd, body + "encoder.layers.0.mlp.fc1.weight")[0]
    return _text_config(family_config(family, "text_encoder"), hidden, intermediate, max(layers) + 1, positions, vocab)


def open_clip_config(sd: Mapping, family: ModelFamily, prefix: str, part: str) -> dict:
    """Config of an OpenCLIP-layout text encoder (SD2's, SDXL's second, the refiner's)."""
    layers = {int(m.group(1)) for k in sd if k.startswith(prefix) for m in [re.search(r"resblocks\.(\d+)\.", k)] if m}
    vocab, hidden = _shape(sd, prefix + "token_embedding.weight")
    positions = _shape(sd, prefix + "positional_embedding")[0]
    intermediate = _shape(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    count = max(layers) + 1
    projection = None
    if family is ModelFamily.SD2:
        count -= 1  # SD2 conditions on the penultimate layer; diffusers drops the last one
    else:
        projection = _shape(sd, prefix + "text_projection")[1]
    return _text_config(family_config(family, part), hidden, intermediate, count, positions, vocab, projection)
