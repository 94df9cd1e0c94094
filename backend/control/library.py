"""The control models a user collects (ControlNets, annotators, IP-Adapters) and turning a request's units into a plan.

One object, created with the app context and passed explicitly (no module
globals). `prepare` runs under the device lock with the checkpoint the job
uses and refuses, before any step, what cannot work: an unknown module or
model, a model of another family, a unit without an image in txt2img.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.control.infotext import unit_infotext
from backend.control.ip_adapter import IpAdapterLibrary, IpAdapterUse
from backend.control.models import ControlNetStore, UnknownControlNetError
from backend.control.plan import ControlPlan, PlannedUnit
from backend.control.preprocessors import PreprocessorLibrary
from backend.control.units import ControlUnit
from backend.models.types import LoadedCheckpoint, ModelFamily

_FAMILY_NAMES = {ModelFamily.SD1: "SD1.x", ModelFamily.SD2: "SD2.x", ModelFamily.SDXL: "SDXL",
                 ModelFamily.SDXL_REFINER: "SDXL refiner"}


@dataclass
class ControlPaths:
    controlnet_dirs: list[Path]  # models/ControlNet (+ --controlnet-dir)
    annotator_dir: Path  # models/annotators (--controlnet-annotator-models-path)
    ipadapter_dirs: list[Path]  # models/ipadapter; models/ControlNet is searched too
    clip_vision_dirs: list[Path]  # models/clip_vision


def family_name(family: ModelFamily | None) -> str:
    return _FAMILY_NAMES.get(family, "unknown") if family else "unknown"


class ControlLibrary:
    def __init__(self, paths: ControlPaths, device: torch.device, dtype: torch.dtype, cache_size: int = 2):
        self.paths = paths
        self.controlnets = ControlNetStore(paths.controlnet_dirs, device=device, dtype=dtype, cache_size=cache_size)
        self.preprocessors = PreprocessorLibrary(paths.annotator_dir, device=device)
        self.ip_adapters = IpAdapterLibrary(paths.ipadapter_dirs + paths.controlnet_dirs, paths.clip_vision_dirs,
                                            device=device, dtype=dtype)

    def refresh(self) -> None:
        self.controlnets.refresh()
        self.ip_adapters.refresh()

    def model_titles(self, family: ModelFamily | None = None) -> list[str]:
        """ControlNets and IP-Adapters usable now, as "name [hash]"; of one family when given."""
        titles = [i.title for i in self.controlnets.files(kind="controlnet")
                  if not i.error and (family is None or i.family in (None, family))]
        titles += [i.title for i in self.ip_adapters.files()
                   if not i.error and (family is None or i.family in (None, family))]
        return titles

    def detect(self, module: str, image, resolution: int | None, threshold_a: float | None,
               threshold_b: float | None):
        """One preprocessor run (the 💥 preview and POST /controlnet/detect)."""
        spec = self.preprocessors.find(module)
        return self.preprocessors.run(spec.name, image.convert("RGB"), resolution, threshold_a, threshold_b)

    # --- one job ---
    def prepare(self, loaded: LoadedCheckpoint, units: list[ControlUnit], cfg_scale: float,
                has_init_image: bool) -> ControlPlan:
        plan = ControlPlan(cfg=cfg_scale > 1,
                           ip_attach=functools.partial(self.ip_adapters.attach, family=loaded.variant.family))
        for index, unit in enumerate(units):
            if not unit.used:
                continue
            if unit.image is None and not has_init_image:
                raise ValueError(f"ControlNet unit {index} is enabled but has no image: upload a control image "
                                 "(or disable the unit)")
            if self._is_ip_adapter(unit):
                info = self.ip_adapters.find(unit.model)
                self._check_family(info.title, info.family, loaded, "IP-Adapter")
                plan.ip_uses.append(IpAdapterUse(name=info.name, images=[unit.image, *unit.more_images] if unit.image else [],
                                                 weight=unit.weight, start=unit.guidance_start,
                                                 end=unit.guidance_end))
                plan.params[f"ControlNet {index}"] = unit_infotext(unit, info.title)
                continue
            spec = self.preprocessors.find(unit.module)
            missing = self.preprocessors.missing_files(spec.name)
            if missing:
                raise ValueError(f"preprocessor {spec.name} needs {', '.join(p.name for p in missing)} in "
                                 f"{self.preprocessors.annotator_dir}")
            info = self.controlnets.find(unit.model)
            self._check_family(info.title, info.family, loaded, "ControlNet")
            info, model = self.controlnets.load(info.name)
            _check_shapes(info.title, model, loaded)
            plan.units.append(PlannedUnit(
                index=index, unit=unit, model_title=info.title, model=model,
                detect=self._detector(spec.name, unit),
                default_resolution=spec.resolution.value if spec.resolution else None, binary=spec.binary))
        return plan

    def _is_ip_adapter(self, unit: ControlUnit) -> bool:
        if unit.is_ip_adapter_module:
            return True
        try:
            return self.controlnets.find(unit.model).kind == "ip-adapter"
        except UnknownControlNetError as unknown:
            try:
                self.ip_adapters.find(unit.model)  # an IP-Adapter kept in models/ipadapter
            except ValueError:
                raise ValueError(f"unknown ControlNet or IP-Adapter {unit.model!r}: put it in "
                                 f"{', '.join(str(d) for d in self.paths.controlnet_dirs)} (IP-Adapters also in "
                                 f"{', '.join(str(d) for d in self.paths.ipadapter_dirs)}) and press refresh") \
                    from unknown
            return True

    def _detector(self, module: str, unit: ControlUnit):
        a = unit.threshold_a if unit.threshold_a >= 0 else None
        b = unit.threshold_b if unit.threshold_b >= 0 else None
        return lambda image, resolution: self.preprocessors.run(module, image, resolution, a, b)

    @staticmethod
    def _check_family(title: str, family: ModelFamily | None, loaded: LoadedCheckpoint, kind: str) -> None:
        mine = loaded.variant.family
        if family is not None and family != mine:
            raise ValueError(f"{kind} {title} is made for {family_name(family)} models, but the checkpoint "
                             f"{loaded.info.name} is {family_name(mine)}: pick a {kind} made for "
                             f"{family_name(mine)}")


def _check_shapes(title: str, model, loaded: LoadedCheckpoint) -> None:
    """A ControlNet's residuals must fit the UNet block for block; the family check cannot see fine-tunes of odd sizes."""
    mine, theirs = loaded.pipe.unet.config, model.config
    for key in ("block_out_channels", "cross_attention_dim", "layers_per_block"):
        a, b = getattr(mine, key, None), getattr(theirs, key, None)
        if a is not None and b is not None and (list(a) if isinstance(a, (list, tuple)) else a) != \
                (list(b) if isinstance(b, (list, tuple)) else b):
            raise ValueError(f"ControlNet {title} does not fit the checkpoint {loaded.info.name}: its {key} is "
                             f"{b}, the UNet's is {a} (a ControlNet for another model family or size)")
