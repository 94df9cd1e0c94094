"""The loaded UNet with ControlNet units feeding its residual inputs, for one sampling pass.

Why a wrapper and not diffusers' ControlNet pipelines: the studio's img2img and
inpaint runs hand the pipeline latents it made itself ("Masked content", latent
resize, 9-channel conditioning), which StableDiffusionControlNetInpaintPipeline
cannot take; and A1111's control modes are per unit, where diffusers has one
`guess_mode` for all. So every pass keeps its usual pipeline and gets this
module as its `unet`: before each UNet call it runs the units active at this
step (diffusers' start/end rule), scales their residuals by weight and mode, and
passes the sums through UNet2DConditionModel's own `down_block_additional_residuals`
/ `mid_block_additional_residual` inputs. A step with no active unit calls the
UNet exactly as a plain job does, so weight 0, or a unit outside its window,
changes nothing bit for bit.

Control modes, as sd-webui-controlnet applies them:
- Balanced: residuals x weight, on both halves of the CFG batch.
- My prompt is more important: residual i also x 0.825^(12-i) (deep blocks keep the
  control, shallow ones fade; SDXL's 10 residuals take the first 10), on both halves.
- ControlNet is more important: the same soft weights, and the control acts only on the
  conditional half (the negative half gets none), so CFG pushes towards the control.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from backend.control.units import IMAGE_RESIZE, ControlUnit
from backend.images.resize import resize_image

SOFT_BASE = 0.825
SOFT_RESIDUALS = 13  # the soft weights are defined over SD1's 12 down residuals + the middle one


@dataclass
class ActiveUnit:
    """A ControlNet unit of one pass: its model and one map per image of the batch."""

    unit: ControlUnit
    model: torch.nn.Module  # diffusers ControlNetModel
    maps: list[Image.Image]  # image k of the batch uses maps[k % len(maps)]
    binary: bool = False  # nearest-neighbour resize keeps a binary map binary
    _tensors: dict = field(default_factory=dict)

    def control_tensor(self, width: int, height: int, count: int, device, dtype) -> torch.Tensor:
        """The maps at the pass's pixel size as a (count, 3, H, W) batch in [0, 1], made once per size."""
        key = (width, height, count, device, dtype)
        if key not in self._tensors:
            planes = []
            for k in range(count):
                picture = self.maps[k % len(self.maps)].convert("RGB")
                if self.binary and picture.size != (width, height):
                    picture = _fit_nearest(picture, IMAGE_RESIZE[self.unit.resize_mode], width, height)
                else:
                    picture = resize_image(picture, IMAGE_RESIZE[self.unit.resize_mode], width, height)
                planes.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1))
            self._tensors[key] = torch.stack(planes).to(device=device, dtype=dtype)
        return self._tensors[key]

    def residual_scales(self, count: int) -> list[float]:
        if self.unit.control_mode == "Balanced":
            return [self.unit.weight] * count
        # SD1/SD2 have 13 residuals; SDXL's 10 take the first 10 of the same list, as sd-webui-controlnet does
        return [self.unit.weight * SOFT_BASE ** (SOFT_RESIDUALS - 1 - i) for i in range(count)]

    @property
    def conditional_only(self) -> bool:
        return self.unit.control_mode == "ControlNet is more important"


def _fit_nearest(picture: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """resize_image's geometry with nearest-neighbour sampling (canny and scribble maps stay 0/255)."""
    if mode == "Just resize":
        return picture.resize((width, height), Image.Resampling.NEAREST)
    scale = (max if mode == "Crop and resize" else min)(width / picture.width, height / picture.height)
    w, h = max(round(picture.width * scale), 1), max(round(picture.height * scale), 1)
    scaled = picture.resize((w, h), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - w) // 2, (height - h) // 2))
    return canvas


class ControlledUNet(torch.nn.Module):
    """Looks like the UNet it wraps (config, dtype, add_embedding... are the UNet's own)."""

    def __init__(self, unet: torch.nn.Module, units: list[ActiveUnit], images: int, vae_scale_factor: int):
        super().__init__()
        self.unet = unet
        self.units = units  # a plain list: the ControlNets are not this pass's submodules to move or save
        self.images = images  # images in the batch; the CFG batch holds twice as many
        self.vae_scale_factor = vae_scale_factor
        self.step = 0
        self._pipe = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)

    # --- the step the pass is on (set by the run's step callback) ---
    def bind(self, pipe) -> None:
        """The pipeline this pass runs: its `num_timesteps` is the step count start/end refer to."""
        self._pipe = weakref.ref(pipe)
        self.step = 0

    def end_step(self, index: int) -> None:
        self.step = index + 1

    def _total_steps(self) -> int:
        pipe = self._pipe() if self._pipe else None
        return getattr(pipe, "num_timesteps", None) or 1

    # --- the UNet call ---
    def forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        total = self._total_steps()
        active = [u for u in self.units if u.unit.weight > 0 and u.unit.active_at(self.step, total)]
        if active:
            down, mid = self._residuals(active, sample, timestep, encoder_hidden_states, added_cond_kwargs)
            kwargs["down_block_additional_residuals"] = down
            kwargs["mid_block_additional_residual"] = mid
        return self.unet(sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs,
                         **kwargs)

    def _residuals(self, active: list[ActiveUnit], sample, timestep, hidden, added):
        batch = sample.shape[0]
        cfg = batch == 2 * self.images  # diffusers puts the negative half first
        latents = sample[:, :4]  # a 9-channel inpainting UNet's input carries mask + masked image after the latents
        height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        down_sum, mid_sum = None, None
        for unit in active:
            model = unit.model
            cond_half = unit.conditional_only and cfg
            rows = slice(self.images, batch) if cond_half else slice(0, batch)
            x = latents[rows].to(model.dtype)
            # SDXL's size and pooled-text conditioning; an IP-Adapter's image embeds are the UNet's alone
            extra = {k: added[k][rows] for k in ("text_embeds", "time_ids") if k in added} if added else None
            count = x.shape[0]
            image = unit.control_tensor(width, height, count, x.device, model.dtype)
            down, mid = model(x, timestep, encoder_hidden_states=hidden[rows].to(model.dtype), controlnet_cond=image,
                              conditioning_scale=1.0, added_cond_kwargs=extra, return_dict=False)
            scales = unit.residual_scales(len(down) + 1)
            down = [d.to(sample.dtype) * s for d, s in zip(down, scales)]
            mid = mid.to(sample.dtype) * scales[-1]
            if cond_half:  # no control on the negative half
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            down_sum = down if down_sum is None else [a + b for a, b in zip(down_sum, down)]
            mid_sum = mid if mid_sum is None else mid_sum + mid
        return down_sum, mid_sum
