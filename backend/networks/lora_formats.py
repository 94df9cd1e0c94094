"""LoRA files -> one weight delta per target module, whatever layout the file uses.

Supported:
- kohya / A1111: `lora_unet_<module>`, `lora_te_<module>` (SD1/SD2),
  `lora_te1_` / `lora_te2_` (SDXL's two text encoders), with `.alpha`
  (scale alpha / rank); module names are diffusers' with "." written "_".
- diffusers / peft: `unet.<module>.lora_A/lora_B.weight` (or `.lora.down/up`),
  `text_encoder.` / `text_encoder_2.`.
- LyCORIS LoHa (`hada_w1_a` ...; with or without the CP `hada_t1/t2`) and LoKr
  (`lokr_w1`, `lokr_w2` or their `_a/_b` factors, `lokr_t2`).
- Linear layers, and convolutions (LoCon: a k x k down, a 1 x 1 up).
Not supported (each named in the error): DoRA (`dora_scale`), full diffs
(`.diff`), LoCon's CP `lora_mid`, IA3, GLoRA.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

UNET, TE, TE2 = "unet", "text_encoder", "text_encoder_2"

_KOHYA = re.compile(r"^(lora_unet|lora_te1|lora_te2|lora_te)_(.+?)\.(.+)$")
_KOHYA_PART = {"lora_unet": UNET, "lora_te": TE, "lora_te1": TE, "lora_te2": TE2}
_PEFT_SUFFIXES = (("lora_A.weight", "lora_down.weight"), ("lora_B.weight", "lora_up.weight"),
                  ("lora.down.weight", "lora_down.weight"), ("lora.up.weight", "lora_up.weight"),
                  ("lora_A.default.weight", "lora_down.weight"), ("lora_B.default.weight", "lora_up.weight"))
_UNSUPPORTED = {"dora_scale": "DoRA", "diff": "full weight differences", "lora_mid.weight": "LoCon CP (lora_mid)",
                "on_input": "IA3", "a1.weight": "GLoRA"}


class LoraFormatError(ValueError):
    pass


@dataclass
class ModuleUpdate:
    """The tensors a file holds for one module, by their kohya-style suffix (lora_down.weight, alpha, ...)."""

    part: str  # UNET, TE or TE2
    module: str  # as the file names it: "down_blocks_0_..." (kohya) or "down_blocks.0...." (peft)
    tensors: dict[str, torch.Tensor]
    sdxl_text: bool = False  # a kohya te1/te2 key: made for SDXL

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """The full weight change at strength 1, shaped like the module's weight (float32)."""
        t = {k: v.float() for k, v in self.tensors.items()}
        if "lora_down.weight" in t:
            down, up = t["lora_down.weight"], t["lora_up.weight"]
            rank = down.shape[0]
            delta = up.flatten(1) @ down.flatten(1)
        elif "hada_w1_a" in t:
            rank = t["hada_w1_b"].shape[0]
            delta = _hada_half(t, "1") * _hada_half(t, "2")
        elif "lokr_w1" in t or "lokr_w1_a" in t:
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            if "lokr_w2" in t:
                w2 = t["lokr_w2"]
            elif "lokr_t2" in t:
                w2 = torch.einsum("ijkl,jr,ip->prkl", t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
            else:
                w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            rank = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            delta = torch.kron(w1, w2)
        else:
            raise LoraFormatError(f"{self.module}: no LoRA tensors ({', '.join(sorted(t))})")
        # alpha / rank, as the trainers scale; LoKr with both factors full has no rank and no scale.
        alpha = t.get("alpha")
        scale = alpha.item() / rank if alpha is not None and rank else 1.0
        return _shaped(delta * scale, shape, self.module)


def _hada_half(t: dict, i: str) -> torch.Tensor:
    if f"hada_t{i}" in t:  # CP-decomposed convolution
        return torch.einsum("ijkl,jr,ip->prkl", t[f"hada_t{i}"], t[f"hada_w{i}_b"], t[f"hada_w{i}_a"])
    return t[f"hada_w{i}_a"] @ t[f"hada_w{i}_b"].flatten(1)


def _shaped(delta: torch.Tensor, shape: torch.Size, module: str) -> torch.Tensor:
    shape = torch.Size(shape)
    flat_conv = delta.ndim == 2 and len(shape) == 4 and delta.shape == (shape[0], shape[1:].numel())
    if delta.shape != shape and not flat_conv:
        raise LoraFormatError(f"{module}: the LoRA's {tuple(delta.shape)} does not fit the model's {tuple(shape)}")
    return delta.reshape(shape)


def group_by_module(tensors: dict[str, torch.Tensor]) -> tuple[list[ModuleUpdate], list[str]]:
    """(one ModuleUpdate per module, keys that belong to no known layout)."""
    updates: dict[tuple[str, str], ModuleUpdate] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        found = _kohya_key(key) or _peft_key(key)
        if found is None:
            unknown.append(key)
            continue
        part, module, suffix, sdxl_text = found
        if suffix in _UNSUPPORTED:
            raise LoraFormatError(f"{_UNSUPPORTED[suffix]} layers are not supported yet ({key})")
        entry = updates.setdefault((part, module), ModuleUpdate(part, module, {}, sdxl_text))
        entry.tensors[suffix] = value
    for update in updates.values():
        if set(update.tensors) <= {"alpha"}:
            raise LoraFormatError(f"{update.module}: has an alpha but no weights")
    return list(updates.values()), unknown


def _kohya_key(key: str):
    match = _KOHYA.match(key)
    if not match:
        return None
    prefix, module, suffix = match.groups()
    return _KOHYA_PART[prefix], module, suffix, prefix in ("lora_te1", "lora_te2")


def _peft_key(key: str):
    for part in (TE2, TE, UNET):  # text_encoder_2 before text_encoder: it is a longer prefix
        if key.startswith(part + "."):
            rest = key[len(part) + 1:]
            for suffix, kohya_suffix in _PEFT_SUFFIXES:
                if rest.endswith("." + suffix):
                    return part, rest[: -len(suffix) - 1], kohya_suffix, False
            if rest.endswith(".alpha"):
                return part, rest[: -len(".alpha")], "alpha", False
    return None
