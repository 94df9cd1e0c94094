"""Putting IP-Adapters on a UNet with diffusers' loader, and taking them off exactly.

All of this changes the shared UNet of a loaded checkpoint: the caller holds the
device lock from `attach` until `restore`, so no other job runs on that UNet
meanwhile.

diffusers 0.42's loader replaces *every* attention processor (attn1 ones with
fresh objects of the same class, attn2 with IPAdapterAttnProcessor2_0), sets
`unet.encoder_hid_proj` to a MultiIPAdapterImageProjection, sets the attribute
`unet.config.encoder_hid_dim_type = "ip_image_proj"`, may stash a Kolors-style
`text_encoder_hid_proj`, and ends with `unet.to(unet.dtype, unet.device)`.
`unload_ip_adapter` installs new default processors instead of the old ones, so
we record those four things and put the very same objects back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

from backend.control.ip_adapter.types import (FAMILY_BY_CROSS_DIM, FAMILY_LABEL, IpAdapterError, IpAdapterInfo,
                                              IpAdapterUse)
from backend.models.types import ModelFamily

_MISSING = object()


def cross_attention_layers(unet) -> list[tuple[str, tuple[int, ...]]]:
    """(processor name, to_k weight shape) of the layers diffusers gives IP weights, in its key order."""
    layers = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        layers.append((name, tuple(attn.to_k.weight.shape)))
    return layers


def model_label(unet, family: ModelFamily | None) -> str:
    cross = unet.config.cross_attention_dim
    family = family or (FAMILY_BY_CROSS_DIM.get(cross) if isinstance(cross, int) else None)
    return FAMILY_LABEL[family] if family else f"this model ({cross}-wide cross-attention)"


def check_fit(unet, info: IpAdapterInfo, state: dict, family: ModelFamily | None = None) -> None:
    """Refuse an adapter whose to_k_ip layers do not match the UNet's attn2 layers one for one."""
    layers = cross_attention_layers(unet)
    adapter = state["ip_adapter"]
    # diffusers numbers the adapter's layers 1, 3, 5, ... over the processors (odd = attn2)
    fits = info.layers == len(layers) and all(
        tuple(adapter.get(f"{2 * i + 1}.to_k_ip.weight", torch.empty(0)).shape) == shape
        for i, (_, shape) in enumerate(layers))
    if not fits:
        unet_cross = layers[0][1][1] if layers else 0
        raise IpAdapterError(
            f"IP-Adapter {info.title} is made for {info.family_label} ({info.layers} cross-attention layers, "
            f"{info.cross_attention_dim} wide) but the loaded model is {model_label(unet, family)} "
            f"({len(layers)} layers, {unet_cross} wide); choose an IP-Adapter made for that model")


@dataclass
class UnetSnapshot:
    """What diffusers' IP-Adapter loader changes on a UNet, as it was before."""

    processors: dict[str, Any]
    encoder_hid_proj: Any
    encoder_hid_proj_is_module: bool
    hid_dim_type: Any
    text_encoder_hid_proj: Any

    @classmethod
    def take(cls, unet) -> "UnetSnapshot":
        return cls(processors=dict(unet.attn_processors), encoder_hid_proj=unet.encoder_hid_proj,
                   encoder_hid_proj_is_module="encoder_hid_proj" in unet._modules,
                   hid_dim_type=unet.config.encoder_hid_dim_type,
                   text_encoder_hid_proj=getattr(unet, "text_encoder_hid_proj", _MISSING))

    def put_back(self, unet) -> None:
        # encoder_hid_proj first: a Resampler's own attention layers count as UNet processors while it is on.
        # The same placement as before too: a plain attribute when it was None, a submodule otherwise.
        unet.__dict__.pop("encoder_hid_proj", None)
        unet._modules.pop("encoder_hid_proj", None)
        if self.encoder_hid_proj_is_module:
            unet._modules["encoder_hid_proj"] = self.encoder_hid_proj
        else:
            unet.__dict__["encoder_hid_proj"] = self.encoder_hid_proj
        unet.config.encoder_hid_dim_type = self.hid_dim_type  # the loader sets the attribute, not the item
        if self.text_encoder_hid_proj is _MISSING:
            if hasattr(unet, "text_encoder_hid_proj"):
                delattr(unet, "text_encoder_hid_proj")
        else:
            unet.text_encoder_hid_proj = self.text_encoder_hid_proj
        unet.set_attn_processor(dict(self.processors))  # it pops from the dict it is given


def ensure_attachable(unet) -> None:
    if unet.encoder_hid_proj is not None and unet.config.encoder_hid_dim_type == "ip_image_proj":
        raise IpAdapterError("this model already has IP-Adapters attached (the previous job did not restore it)")
    kinds = {(p.dtype, p.device) for p in unet.parameters()}
    if len(kinds) > 1:  # diffusers' loader ends with unet.to(one dtype), which would recast the shared weights
        raise IpAdapterError(f"IP-Adapter needs a UNet in one precision on one device; this one mixes {kinds}")


def put_on(unet, states: list[dict]) -> UnetSnapshot:
    """Attach adapters (state dicts already checked and on the UNet's device/dtype); returns the snapshot."""
    ensure_attachable(unet)
    snapshot = UnetSnapshot.take(unet)
    try:
        # The UNet half of `pipe.load_ip_adapter`: with a dict it would otherwise only insist on an image
        # encoder registered on the pipeline (or warn), and load Face ID LoRAs, which we refuse earlier.
        unet._load_ip_adapter_weights(states, low_cpu_mem_usage=True)
    except Exception:
        snapshot.put_back(unet)
        raise
    return snapshot


_IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)


class AttachedAdapters:
    """Adapters on a pipeline's UNet for one job: their embeddings, their schedule, and the way back."""

    def __init__(self, pipe, snapshot: UnetSnapshot, units: list[IpAdapterUse], infos: list[IpAdapterInfo],
                 embeds: list[tuple[torch.Tensor, torch.Tensor]]):
        self.pipe, self.units, self.infos = pipe, units, infos
        self._snapshot: UnetSnapshot | None = snapshot
        self._embeds = embeds  # per unit: (negative, positive), each (1, dim) or (1, tokens, hidden)

    @property
    def attached(self) -> bool:
        return self._snapshot is not None

    def pipeline_kwargs(self, do_cfg: bool, batch: int) -> dict:
        """`ip_adapter_image_embeds` for a pipeline call with `batch` prompts and num_images_per_prompt=1."""
        param = next(self.pipe.unet.parameters())
        out = []
        for negative, positive in self._embeds:
            # (batch, 1 image, ...): diffusers' projection layers take a per-image axis
            pos = positive.unsqueeze(1).expand(batch, *positive.unsqueeze(1).shape[1:])
            neg = negative.unsqueeze(1).expand(batch, *negative.unsqueeze(1).shape[1:])
            both = torch.cat([neg, pos]) if do_cfg else pos  # the pipeline splits [negative, positive] with chunk(2)
            out.append(both.to(device=param.device, dtype=param.dtype).contiguous())
        return {"ip_adapter_image_embeds": out}

    def scales_at(self, fraction: float) -> list[float]:
        """Each unit's weight at this share of sampling (0 = first step); 0 outside its start..end."""
        return [float(u.weight) if u.start <= fraction <= u.end else 0.0 for u in self.units]

    def apply_step(self, pipe, fraction: float) -> None:
        """Set the scales for the next UNet call: before sampling (0) and from the step-end callback.

        What `set_ip_adapter_scale` does with one weight per adapter, done on our UNet's own IP processors,
        so it works whatever `pipe` is (a pass's pipeline, or the UNet holder the plan attaches through).
        """
        scales = self.scales_at(fraction)
        for processor in self.pipe.unet.attn_processors.values():
            if isinstance(processor, _IP_PROCESSORS):
                processor.scale = list(scales)

    def restore(self) -> None:
        """Put the UNet back exactly as before attach (the very same processor objects); idempotent."""
        if self._snapshot is not None:
            self._snapshot.put_back(self.pipe.unet)
            self._snapshot = None

    def infotext(self) -> list[str]:
        return [f"{info.title}, Weight: {u.weight:g}, Start: {u.start:g}, End: {u.end:g}"
                for u, info in zip(self.units, self.infos)]

    def __enter__(self) -> "AttachedAdapters":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
