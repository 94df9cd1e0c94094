"""One job's control: the request's units resolved to models and maps, and how a pass uses them.

`ControlLibrary.prepare` (library.py) builds a ControlPlan under the device
lock before any step runs, so a wrong family, a missing file or a unit without
an image is refused with a message and nothing is sampled. The runner asks the
plan for each pass's UNet (a ControlledUNet when a ControlNet unit is on), the
IP-Adapter inputs of the pipeline call, and the per-step updates; the service
calls `close()` after the job, which puts the UNet back as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from backend.control.controlled_unet import ActiveUnit, ControlledUNet
from backend.control.infotext import unit_infotext
from backend.control.units import ControlUnit, pixel_perfect_resolution

Detector = Callable[[Image.Image, int | None], Image.Image]  # (source, resolution) -> map


@dataclass
class _UNetOnly:
    """What attaching an IP-Adapter reads of a pipeline: its UNet."""

    unet: Any


@dataclass
class PlannedUnit:
    """A ControlNet unit with its model loaded and its preprocessor chosen."""

    index: int  # the unit's number in the request: "ControlNet 0", "ControlNet 1"...
    unit: ControlUnit
    model_title: str
    model: Any  # diffusers ControlNetModel
    detect: Detector
    default_resolution: int | None  # the preprocessor's own resolution; None: it takes none
    binary: bool = False
    _maps: dict[int, Image.Image] = field(default_factory=dict)  # id(source) -> map
    _sources: dict[int, Image.Image] = field(default_factory=dict)  # keeps those ids alive and unique
    used_resolution: int | None = None  # the preprocessor resolution the last map was made at (infotext)

    def resolution(self, source: Image.Image, target: tuple[int, int]) -> int | None:
        if self.default_resolution is None:
            return None
        if self.unit.pixel_perfect:
            return pixel_perfect_resolution(source.size, target, self.unit.resize_mode)
        return self.unit.processor_res if self.unit.processor_res > 0 else self.default_resolution

    def map_for(self, fallback: Image.Image | None, target: tuple[int, int]) -> Image.Image:
        """The unit's map: from its own image, else from `fallback` (the img2img picture), made once."""
        source = self.unit.image if self.unit.image is not None else fallback
        if source is None:
            raise ValueError(f"ControlNet unit {self.index} has no image: upload one (txt2img has no picture "
                             "to take it from)")
        key = id(source)
        if key not in self._maps:
            self._sources[key] = source
            self.used_resolution = self.resolution(source, target)
            self._maps[key] = self.detect(source.convert("RGB"), self.used_resolution)
        return self._maps[key]


@dataclass
class ControlPlan:
    units: list[PlannedUnit] = field(default_factory=list)
    ip_adapters: Any = None  # what IpAdapterLibrary.attach returned (AttachedAdapters), once attached
    ip_uses: list = field(default_factory=list)  # IpAdapterUse entries waiting for a pipeline to attach to
    ip_attach: Callable | None = None  # (pipe, uses) -> AttachedAdapters
    params: dict[str, str] = field(default_factory=dict)  # infotext "ControlNet N" entries
    cfg: bool = True  # whether the job runs classifier-free guidance (IP-Adapter embeds need to know)
    maps_used: list[Image.Image] = field(default_factory=list)  # the detected maps, shown and saved on request

    @property
    def active(self) -> bool:
        return bool(self.units or self.ip_uses or self.ip_adapters)

    # --- one pass ---
    def unet_for(self, unet, fallbacks: list[Image.Image | None], size: tuple[int, int], images: int,
                 vae_scale_factor: int, stage: str = "single"):
        """The UNet a pass's pipeline gets: the loaded one, or it wrapped with this pass's ControlNet units.

        `stage` is "single", or "first" / "hires" with hires. fix (the units' Hires-fix option picks).
        """
        planned_units = [p for p in self.units if p.unit.acts_in(stage)]
        if not planned_units:
            return unet
        active = []
        for planned in planned_units:
            maps = [planned.map_for(f, size) for f in (fallbacks or [None])]
            for picture in maps:
                if not any(picture is seen for seen in self.maps_used):
                    self.maps_used.append(picture)
            active.append(ActiveUnit(unit=planned.unit, model=planned.model, maps=maps, binary=planned.binary))
        return ControlledUNet(unet, active, images, vae_scale_factor)

    def attach_ip_adapters(self, pipe, fallback: Image.Image | None) -> None:
        """Put the IP-Adapters on the UNet once per job (the first pass's pipeline), with their images."""
        if self.ip_adapters is not None or not self.ip_uses:
            return
        for use in self.ip_uses:
            if not use.images:
                if fallback is None:
                    raise ValueError(f"IP-Adapter {use.name} has no reference image: upload one")
                use.images = [fallback]
        # The adapters go on the loaded UNet itself, not on this pass's ControlNet wrapper around it.
        unet = _controlled(pipe.unet)
        unet = unet.unet if unet is not None else getattr(pipe.unet, "base_unet", pipe.unet)
        self.ip_adapters = self.ip_attach(_UNetOnly(unet), self.ip_uses)

    def pipeline_kwargs(self, images: int) -> dict:
        return self.ip_adapters.pipeline_kwargs(self.cfg, images) if self.ip_adapters is not None else {}

    def start_pass(self, pipe) -> None:
        if (controlled := _controlled(pipe.unet)) is not None:
            controlled.bind(pipe)
        if self.ip_adapters is not None:
            self.ip_adapters.apply_step(pipe, 0.0)

    def end_step(self, pipe, index: int) -> None:
        if (controlled := _controlled(pipe.unet)) is not None:
            controlled.end_step(index)
        if self.ip_adapters is not None:
            self.ip_adapters.apply_step(pipe, (index + 1) / max(pipe.num_timesteps, 1))

    def infotext_params(self) -> dict[str, str]:
        """sd-webui-controlnet's "ControlNet N" entries, in unit order."""
        entries = dict(self.params)  # IP-Adapter units, written at prepare
        for planned in self.units:
            entries[f"ControlNet {planned.index}"] = unit_infotext(planned.unit, planned.model_title,
                                                                 planned.used_resolution)
        return {key: entries[key] for key in sorted(entries, key=lambda k: int(k.split()[-1]))}

    def close(self) -> None:
        """After the job: the UNet exactly as before it (IP-Adapter processors and projection restored)."""
        if self.ip_adapters is not None:
            self.ip_adapters.restore()
            self.ip_adapters = None


def _controlled(unet) -> ControlledUNet | None:
    """The pass's ControlledUNet, also when a refiner's hand-over wraps it (backend/sdxl/handover.py)."""
    unet = getattr(unet, "base_unet", unet)
    return unet if isinstance(unet, ControlledUNet) else None
