"""The base UNet handing over to the refiner's within one sampling pass.

Why one pass and not two pipeline calls (diffusers' `denoising_end` / `denoising_start`): the
pass keeps one scheduler, so the refiner continues the same schedule with the solver's history
and the same stream of ancestral noise, as A1111's switch of models inside its sampler loop does;
and it works for every pipeline the studio runs (SD1 / SD2 txt2img, img2img, inpaint, hires),
not only the SDXL ones that take `denoising_start`. The pipeline keeps calling `unet(...)` with
the base's text conditioning; once the switch point is reached this module calls the refiner's
UNet instead, with the refiner's own encoding of the same prompts (and for an SDXL refiner, its
aesthetic-score size ids). A refiner that is the base itself (a copy of the file) therefore
draws the base's pixels exactly.

The switch point, as A1111 1.7+: by default by noise level, when (999 - t) / 1000 reaches
`switch_at` (diffusers' `high_noise_fraction` means the same); with the setting
refiner_switch_by_sample_steps, when that fraction of the pass's steps is done. Once switched,
the pass stays on the refiner.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from backend.models.types import LoadedCheckpoint, ModelFamily
from backend.prompts.conditioning import PromptEncoder, StepConditioning
from backend.sdxl.size_conditioning import SizeConditioning

HIRES_PASSES = ("first pass", "second pass", "both passes")  # A1111's hires_fix_refiner_pass


@dataclass
class RefinerPlan:
    """A job's refiner: the loaded model and the settings that say when and how it takes over."""

    loaded: LoadedCheckpoint
    switch_at: float
    by_steps: bool = False  # refiner_switch_by_sample_steps
    aesthetic_score: float = 6.0  # sdxl_refiner_high_aesthetic_score: the prompt's
    negative_aesthetic_score: float = 2.5  # sdxl_refiner_low_aesthetic_score: the negative prompt's
    hires_pass: str = "second pass"  # hires_fix_refiner_pass

    def switches_in(self, stage: str) -> bool:
        """Whether a pass of this stage ("single", "first", "hires") may hand over."""
        if stage == "first":
            return self.hires_pass != "second pass"
        if stage == "hires":
            return self.hires_pass != "first pass"
        return True

    def infotext_params(self, handed_over: bool, hires: bool) -> dict[str, object]:
        """A1111 writes these only when the switch happened."""
        if not handed_over:
            return {}
        info = self.loaded.info
        params: dict[str, object] = {"Refiner": f"{info.model_name} [{info.shorthash}]" if info.shorthash
                                     else info.model_name, "Refiner switch at": self.switch_at}
        if hires and self.hires_pass != "second pass":
            params["Hires refiner"] = self.hires_pass
        if self.by_steps:
            params["Refiner switch by sampling steps"] = True
        return params


def check_refiner(base: LoadedCheckpoint, refiner: LoadedCheckpoint) -> None:
    """Refuse, before any work, a refiner whose latents or inputs the base's cannot feed."""
    if base.variant.family.is_sdxl != refiner.variant.family.is_sdxl:
        raise ValueError(f"the refiner {refiner.info.name} ({refiner.variant.label}) works in another latent space "
                         f"than {base.info.name} ({base.variant.label}): pick an SDXL refiner for an SDXL model, "
                         "an SD1 / SD2 one for SD1 / SD2")
    base_in, refiner_in = base.pipe.unet.config.in_channels, refiner.pipe.unet.config.in_channels
    if refiner_in != 4 and refiner_in != base_in:
        raise ValueError(f"the refiner {refiner.info.name} is an inpainting model: it can refine only an "
                         "inpainting model's job")


class RefinerConditioning:
    """The refiner's inputs for one pass: its encoding of the prompts, its pooled text and size ids."""

    def __init__(self, plan: RefinerPlan, encoder: PromptEncoder, prompt: str, negative: str, steps: int,
                 images: int, size: tuple[int, int], sizes: SizeConditioning):
        self.texts = StepConditioning(encoder, prompt, negative, steps, images)
        self.images = images
        unet = plan.loaded.pipe.unet
        self.device, self.dtype = unet.device, unet.dtype
        family = plan.loaded.variant.family
        self.time_ids = self.negative_time_ids = None
        if family.is_sdxl:
            kwargs = sizes.sizes(*size)
            if family is ModelFamily.SDXL_REFINER:  # trained on an aesthetic score instead of the target size
                positive = (*kwargs["original_size"], *kwargs["crops_coords_top_left"], plan.aesthetic_score)
                negative_ids = (*kwargs["negative_original_size"], *kwargs["negative_crops_coords_top_left"],
                                plan.negative_aesthetic_score)
            else:
                positive = (*kwargs["original_size"], *kwargs["crops_coords_top_left"], *kwargs["target_size"])
                negative_ids = (*kwargs["negative_original_size"], *kwargs["negative_crops_coords_top_left"],
                                *kwargs["negative_target_size"])
            self.time_ids = torch.tensor([positive], dtype=self.dtype)
            self.negative_time_ids = torch.tensor([negative_ids], dtype=self.dtype)

    def at(self, step: int, cfg: bool) -> tuple[torch.Tensor, dict | None]:
        """(encoder_hidden_states, added_cond_kwargs) for step `step`; with CFG the batch is [negative, positive]."""
        embeds, pooled = self.texts.tensors(step, cfg)
        added = None
        if self.time_ids is not None:
            ids = self.time_ids.repeat(self.images, 1)
            if cfg:
                ids = torch.cat([self.negative_time_ids.repeat(self.images, 1), ids])
            added = {"text_embeds": pooled.to(self.device), "time_ids": ids.to(self.device)}
        return embeds.to(self.device), added


class HandOverUNet(torch.nn.Module):
    """Looks like the base UNet (config, dtype, add_embedding... are its own) until the refiner takes over."""

    def __init__(self, base_unet: torch.nn.Module, plan: RefinerPlan, *, may_switch: bool, switched: bool = False):
        super().__init__()
        self.base_unet = base_unet  # the loaded UNet, or it wrapped with this pass's ControlNet units
        self.plan = plan
        self.refiner_unet = plan.loaded.pipe.unet
        self.may_switch = may_switch
        self.switched = switched
        self.conditioning: RefinerConditioning | None = None
        self.steps_done, self.steps = 0, 1
        self.calls = {"base": 0, "refiner": 0}  # UNet calls on each model, for the tests and the log

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_unet"), name)

    def prepare(self, conditioning: RefinerConditioning, steps: int) -> None:
        """The pass's refiner conditioning and its step count (for the switch by steps)."""
        self.conditioning, self.steps, self.steps_done = conditioning, max(steps, 1), 0

    def end_step(self, done: int) -> None:
        self.steps_done = done

    def _reached(self, timestep) -> bool:
        if self.by_steps:
            return self.steps_done / self.steps >= self.plan.switch_at
        t = float(timestep.max()) if torch.is_tensor(timestep) else float(timestep)
        total = self.refiner_unet.config.get("num_train_timesteps", 1000)
        return (total - 1 - t) / total >= self.plan.switch_at

    @property
    def by_steps(self) -> bool:
        return self.plan.by_steps

    def forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        if not self.switched and self.may_switch and self.conditioning is not None and self._reached(timestep):
            self.switched = True
        if not self.switched:
            self.calls["base"] += 1
            return self.base_unet(sample, timestep, encoder_hidden_states, *args,
                                  added_cond_kwargs=added_cond_kwargs, **kwargs)
        self.calls["refiner"] += 1
        cfg = sample.shape[0] == 2 * self.conditioning.images
        hidden, added = self.conditioning.at(self.steps_done, cfg)
        refiner = self.refiner_unet
        x = sample if refiner.config.in_channels == sample.shape[1] else sample[:, :refiner.config.in_channels]
        # The base's extra inputs (ControlNet residuals, an IP-Adapter's image embeds) are not the refiner's.
        output = refiner(x.to(refiner.dtype), timestep, encoder_hidden_states=hidden, added_cond_kwargs=added,
                         return_dict=False)[0].to(sample.dtype)
        return (output,) if not kwargs.get("return_dict", True) else UNet2DConditionOutput(sample=output)
