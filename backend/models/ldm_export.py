"""Write diffusers models back in the original (A1111/LDM) single-file key layout.

The inverse of diffusers' single-file converters: used to save checkpoints
the studio makes itself (the demo model) and by the test fixtures. A round-trip
test checks that diffusers' own converters map these keys back exactly.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return {"model.diffusion_model." + unet_key_to_ldm(unet, key): value for key, value in unet.state_dict().items()}


def unet_key_to_ldm(unet: UNet2DConditionModel, key: str) -> str:
    """A diffusers UNet state-dict key in the original layout, without the `model.diffusion_model.` prefix."""
    per_level = unet.config.layers_per_block + 1
    parts = key.split(".")
    head, rest = parts[0], parts[1:]
    if head in ("conv_in",):
        new = "input_blocks.0.0." + ".".join(rest)
    elif head == "time_embedding":
        new = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[rest[0]] + "." + rest[1]
    elif head == "add_embedding":
        new = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}[rest[0]] + "." + rest[1]
    elif head == "conv_norm_out":
        new = "out.0." + rest[0]
    elif head == "conv_out":
        new = "out.2." + rest[0]
    elif head == "down_blocks":
        level, kind, j, tail = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if kind == "downsamplers":
            new = f"input_blocks.{(level + 1) * per_level}.0.op." + ".".join(tail[1:])
        else:
            block = 1 + level * per_level + j
            new = _block_key(f"input_blocks.{block}", kind, tail)
    elif head == "mid_block":
        kind, j, tail = rest[0], int(rest[1]), rest[2:]
        if kind == "attentions":
            new = "middle_block.1." + ".".join(tail)
        else:
            new = f"middle_block.{2 * j}.{_RESNET[tail[0]]}." + ".".join(tail[1:])
    elif head == "up_blocks":
        level, kind, j, tail = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if kind == "upsamplers":
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            block = level * per_level + per_level - 1
            new = f"output_blocks.{block}.{2 if has_attention else 1}.conv." + ".".join(tail[1:])
        else:
            new = _block_key(f"output_blocks.{level * per_level + j}", kind, tail)
    else:
        raise KeyError(f"unexpected UNet key {key}")
    return new


def _block_key(prefix: str, kind: str, tail: list[str]) -> str:
    if kind == "resnets":
        return f"{prefix}.0.{_RESNET[tail[0]]}." + ".".join(tail[1:])
    return f"{prefix}.1." + ".".join(tail)


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            kind, j = parts[2], int(parts[3])
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{_VAE_RESNET[parts[4]]}.{parts[-1]}"
            else:
                new = f"{side}.mid.attn_1.{_VAE_ATTN[parts[4]]}.{parts[-1]}"
                if value.ndim == 2:  # the original stores these as 1x1 convolutions
                    value = value[:, :, None, None]
        else:  # down_blocks / up_blocks
            level, kind = int(parts[2]), parts[3]
            ldm_level = level if side == "encoder" else levels - 1 - level
            group = "down" if side == "encoder" else "up"
            if kind == "resnets":
                new = f"{side}.{group}.{ldm_level}.block.{parts[4]}.{_VAE_RESNET[parts[5]]}.{parts[-1]}"
            else:
                new = f"{side}.{group}.{ldm_level}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{parts[-1]}"
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(model: CLIPTextModel, prefix: str) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel; the original layout keeps `text_model.`
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in model.state_dict().items()}


_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def open_clip_to_ldm(model, prefix: str, extra_layer: bool, seed: int) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias")}
    hidden = out[prefix + "token_embedding.weight"].shape[1]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    else:  # SD2 files carry a projection the UNet never uses
        out[prefix + "text_projection"] = torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(seed))
    layers = model.config.num_hidden_layers
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(src + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for ours, theirs in _OPENCLIP.items():
                out[dst + f"{theirs}.{kind}"] = sd.pop(src + f"{ours}.{kind}")
    if extra_layer:  # SD2 files hold one more layer than SD2 uses (it takes the penultimate one)
        gen = torch.Generator().manual_seed(seed)
        template = {k.removeprefix(f"{prefix}transformer.resblocks.0."): v for k, v in out.items()
                    if k.startswith(f"{prefix}transformer.resblocks.0.")}
        for name, value in template.items():
            out[f"{prefix}transformer.resblocks.{layers}.{name}"] = torch.randn(value.shape, generator=gen) * 0.02
    sd.pop("embeddings.position_ids", None)
    assert not sd, f"unmapped text encoder keys: {sorted(sd)[:5]}"
    return out


