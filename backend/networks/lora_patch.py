"""Apply LoRAs to a loaded checkpoint's weights in place, and take them off exactly.

Before a module's weight first changes, a copy of it is kept; taking the
LoRAs off copies it back, so the weights are bit for bit what they were.
Applying the same set again is free; a different set first restores, then
applies. The patcher belongs to one LoadedCheckpoint and is only used under
the model manager's device lock (one job on the device at a time).

The LoRA's change is added in float32 and rounded once to the model's dtype:
no reload, no extra work per sampling step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.models.ldm_export import unet_key_to_ldm
from backend.networks.lora_formats import TE, TE2, UNET, LoraFormatError, ModuleUpdate


@dataclass
class LoraReport:
    """What applying one LoRA did: how many of its modules found a home."""

    name: str
    applied: int = 0
    unmatched: int = 0
    mismatched: int = 0

    @property
    def usable(self) -> bool:
        return self.applied > 0


def _patchable(module) -> bool:
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))


class ModuleIndex:
    """A LoRA's module names -> the pipeline's modules, for every naming the formats use."""

    def __init__(self, pipe):
        self.modules: dict[tuple[str, str], torch.nn.Module] = {}
        self.parts = set()
        unet = pipe.unet
        self.parts.add(UNET)
        for name, module in unet.named_modules():
            if not _patchable(module):
                continue
            self._add(UNET, name, module)
            try:  # A1111-era files name UNet modules by the original layout (input_blocks_4_1_...)
                ldm = unet_key_to_ldm(unet, name + ".weight").removesuffix(".weight")
                self.modules[(UNET, ldm.replace(".", "_"))] = module
            except (KeyError, ValueError, IndexError):
                pass
        for part in (TE, TE2):
            encoder = getattr(pipe, part, None)
            if encoder is None:
                continue
            self.parts.add(part)
            for name, module in encoder.named_modules():
                if _patchable(module):
                    # transformers 5 dropped the `text_model.` level the files still name
                    self._add(part, "text_model." + name, module)
                    self._add(part, name, module)

    def _add(self, part: str, name: str, module) -> None:
        self.modules[(part, name)] = module
        self.modules[(part, name.replace(".", "_"))] = module

    def find(self, part: str, name: str):
        return self.modules.get((part, name))


class LoraPatcher:
    def __init__(self, pipe):
        self.pipe = pipe
        self.index = ModuleIndex(pipe)
        self._originals: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
        self._applied_key: tuple = ()
        self._reports: list[LoraReport] = []

    @property
    def applied_key(self) -> tuple:
        return self._applied_key

    def restore(self) -> None:
        """Every patched weight back to the exact tensor it was before."""
        with torch.no_grad():
            for module, original in self._originals.values():
                module.weight.copy_(original)
        self._originals.clear()
        self._applied_key, self._reports = (), []

    def apply(self, loras: list[tuple[str, list[ModuleUpdate], float, float]], key: tuple) -> list[LoraReport]:
        """loras: (name, its modules, text-encoder weight, UNet weight). `key` identifies the set."""
        if key == self._applied_key and key:
            return self._reports
        self.restore()
        if not loras:
            return []
        deltas: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
        reports = []
        for name, updates, te_weight, unet_weight in loras:
            report = LoraReport(name)
            reports.append(report)
            staged = []
            for update in updates:
                weight = unet_weight if update.part == UNET else te_weight
                if update.sdxl_text and TE2 not in self.index.parts:
                    report.mismatched += 1
                    continue
                module = self.index.find(update.part, update.module)
                if module is None:
                    report.unmatched += 1
                    continue
                if weight == 0:
                    report.applied += 1
                    continue
                try:
                    staged.append((module, update.delta(module.weight.shape), weight))
                except LoraFormatError:
                    report.mismatched += 1
                    continue
                report.applied += 1
            if report.mismatched:  # made for another model: the names that happen to fit would only add noise
                report.applied = 0
                continue
            for module, delta, weight in staged:
                slot = deltas.setdefault(id(module), (module, torch.zeros(module.weight.shape, dtype=torch.float32)))
                slot[1].add_(delta, alpha=weight)
        with torch.no_grad():
            for module_id, (module, delta) in deltas.items():
                self._originals[module_id] = (module, module.weight.detach().clone())
                patched = module.weight.float() + delta.to(module.weight.device)
                module.weight.copy_(patched.to(module.weight.dtype))
        self._applied_key, self._reports = key, reports
        return reports
