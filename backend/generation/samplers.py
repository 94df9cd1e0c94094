"""A1111 sampler names and schedule types, mapped onto diffusers schedulers.

A1111 splits the choice in two: a *sampler* (the solver: Euler a, DPM++ 2M, ...)
and a *schedule type* (how the noise levels are spaced: Karras, Exponential,
...). diffusers folds both into one scheduler class plus config flags. This
module holds the one table that maps the former onto the latter.

`make_scheduler` returns a new scheduler instance on every call: schedulers keep
per-run state (step index, model output history), so two requests must never
share one.

What could not be honoured with diffusers' schedulers:

* "DPM fast" and "DPM adaptive" (k-diffusion's adaptive-step DPM-Solver) have no
  diffusers counterpart; they are left out of SAMPLER_NAMES.
* "DPM++ SDE": diffusers' DPMSolverSDEScheduler (the port of k-diffusion's
  sample_dpmpp_sde) needs the `torchsde` package, which is not a dependency
  here, and it draws its Brownian noise from a seed of its own rather than the
  pipeline's generators, so the same seed would not give the same image. We map
  it to DPMSolverSinglestepScheduler with algorithm "sde-dpmsolver++" at order 2:
  also a single-step, second-order DPM-Solver++ with SDE noise, the closest
  reproducible choice. It does not match A1111's pixels exactly. That class's
  own spacing (t_max down to 0 in steps + 1 points, the last dropped) is
  k-diffusion's SGM uniform; the subclass below adds A1111's "Uniform"
  (t_max down to 0 in steps points).
* DDIM and PLMS step over discrete timesteps and take no sigma schedule: they
  offer the timestep spacings only (Automatic, Uniform, SGM Uniform).
* LCM and TCD (consistency samplers for LCM / TCD / Hyper models and LoRAs) walk
  their distillation schedule (Automatic: 50 steps over the training range,
  `original_inference_steps`, from which the requested number is picked) or the
  SGM-uniform (trailing) timesteps that ComfyUI users pair with them. diffusers
  refuses more steps than that distillation schedule has; here more steps spread
  over the whole training range instead.
* TCD's stochasticity ("gamma" in the paper, `eta` of TCDScheduler.step) is the
  scheduler's `gamma` config, 0.3 by default as in diffusers' docs. The
  pipelines would otherwise pass their own `eta` (0.0) to the step; an
  extension can offer another gamma as a sampler of its own
  (`SamplerSpec("TCD 1-step", TCDSamplerScheduler, {"gamma": 1.0}, ...)`).
* Few-step models (Turbo, Lightning, Hyper) want their first step at the top of
  the noise schedule: "SGM Uniform" gives Euler, Euler a, DPM++ SDE, DDIM, LCM
  and TCD diffusers' "trailing" spacing (1 step = timestep 999, sigma_max);
  "Automatic" keeps the model's own spacing, which for SD's "leading" starts
  low at few steps.
* A1111 also lists Polyexponential, KL Optimal, Align Your Steps, Simple, Normal,
  DDIM and Beta schedules; SCHEDULE_TYPES keeps the five above.

diffusers' Euler a scheduler has no Karras/Exponential option; the small
subclass below borrows those sigmas from EulerDiscreteScheduler, so Euler a
offers all five (A1111 infotexts often say "Euler a, Karras").
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import register_to_config

AUTOMATIC = "Automatic"
UNIFORM = "Uniform"
KARRAS = "Karras"
EXPONENTIAL = "Exponential"
SGM_UNIFORM = "SGM Uniform"

SCHEDULE_TYPES: tuple[str, ...] = (AUTOMATIC, UNIFORM, KARRAS, EXPONENTIAL, SGM_UNIFORM)

_ALL = SCHEDULE_TYPES
_SPACING_ONLY = (AUTOMATIC, UNIFORM, SGM_UNIFORM)

# Settings that describe the model's training noise schedule. They come from the
# checkpoint's own scheduler config; everything else is the sampler's business.
_MODEL_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
    "clip_sample", "set_alpha_to_one",
)
# Latent diffusion never clips x0 to [-1, 1], and SD's schedule keeps the last
# alpha; DDIM's and PNDM's class defaults say otherwise, so these win when the
# model's config does not say.
_MODEL_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}


class EulerAncestralSigmasScheduler(EulerAncestralDiscreteScheduler):
    """Euler a that can also follow the Karras or exponential noise schedule.

    EulerAncestralDiscreteScheduler only spaces timesteps. EulerDiscreteScheduler,
    built from the same config, computes the Karras/exponential sigmas and their
    (fractional) timesteps; the ancestral step then walks those sigmas as it would
    its own. Everything else is the parent's.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
    ) -> None:
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
            timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        super().set_timesteps(num_inference_steps, device)
        if not (self.config.use_karras_sigmas or self.config.use_exponential_sigmas):
            return
        guide = EulerDiscreteScheduler.from_config(self.config)
        guide.set_timesteps(num_inference_steps, device)
        self.timesteps = guide.timesteps
        self.sigmas = guide.sigmas.to("cpu")


def trailing_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """diffusers' "trailing" spacing (SGM uniform): from the last training timestep down, evenly."""
    return (np.round(num_train_timesteps - np.arange(steps) * (num_train_timesteps / steps)) - 1).astype(np.int64)


class DPMSolverSinglestepSpacedScheduler(DPMSolverSinglestepScheduler):
    """DPM++ SDE (single-step, SDE noise) that can also space its timesteps as A1111's "Uniform".

    The parent's own spacing is kept for "trailing" (SGM uniform, which it already is);
    "linspace" gives k-diffusion's uniform: `steps` timesteps from t_max down to 0.
    Karras / exponential sigmas are the parent's.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        algorithm_type: str = "sde-dpmsolver++",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "trailing",
    ) -> None:
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, solver_order=solver_order,
            prediction_type=prediction_type, algorithm_type=algorithm_type, lower_order_final=lower_order_final,
            use_karras_sigmas=use_karras_sigmas, use_exponential_sigmas=use_exponential_sigmas,
            use_beta_sigmas=use_beta_sigmas, final_sigmas_type=final_sigmas_type,
        )

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: list[int] | None = None) -> None:
        sigma_schedule = self.config.use_karras_sigmas or self.config.use_exponential_sigmas \
            or self.config.use_beta_sigmas
        if timesteps is None and num_inference_steps and self.config.timestep_spacing == "linspace" \
                and not sigma_schedule:
            last = self.config.num_train_timesteps - 1
            timesteps = np.linspace(last, 0, num_inference_steps).round().astype(np.int64).tolist()
            num_inference_steps = None
        super().set_timesteps(num_inference_steps, device, mu=mu, timesteps=timesteps)


class _ConsistencyTimesteps:
    """LCM's and TCD's timesteps at any step count, and SGM uniform (trailing) on request.

    diffusers picks the steps from the distillation schedule (`original_inference_steps`,
    50) and raises above it; more steps then spread over every training timestep.
    With `timestep_spacing="trailing"` the picked timesteps are replaced by the
    trailing ones (the step itself only reads `self.timesteps`).
    """

    def set_timesteps(self, num_inference_steps: int | None = None, device=None,
                      original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                      strength: float = 1.0) -> None:
        plain = timesteps is None and num_inference_steps is not None and original_inference_steps is None \
            and strength == 1.0
        if plain and num_inference_steps > self.config.original_inference_steps:
            original_inference_steps = self.config.num_train_timesteps
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device,
                              original_inference_steps=original_inference_steps, timesteps=timesteps,
                              strength=strength)
        if plain and self.config.timestep_spacing == "trailing":
            spaced = trailing_timesteps(self.config.num_train_timesteps, num_inference_steps)
            self.timesteps = torch.from_numpy(spaced).to(device=device, dtype=torch.long)


class LCMSamplerScheduler(_ConsistencyTimesteps, LCMScheduler):
    """diffusers' LCMScheduler, with the timesteps of `_ConsistencyTimesteps`."""


TCD_GAMMA = 0.3  # TCDScheduler.step's default eta, the paper's gamma


class TCDSamplerScheduler(_ConsistencyTimesteps, TCDScheduler):
    """diffusers' TCDScheduler with its gamma in the config.

    Its `step` takes no `eta`, so the pipelines (which pass their own `eta`, 0.0 by
    default, to any step that accepts one) leave the configured gamma alone.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
        gamma: float = TCD_GAMMA,
    ) -> None:
        if not (0.0 <= gamma <= 1.0) or math.isnan(gamma):
            raise ValueError(f"TCD gamma must be between 0 and 1, not {gamma}")
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, original_inference_steps=original_inference_steps,
            clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
            prediction_type=prediction_type, timestep_spacing=timestep_spacing, timestep_scaling=timestep_scaling,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        return super().step(model_output, timestep, sample, eta=self.config.gamma, generator=generator,
                            return_dict=return_dict)


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler_cls: type
    options: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = _ALL
    # What "Automatic" means for this sampler (as in A1111's sampler table);
    # None: the model's own timestep spacing.
    automatic: str | None = None
    aliases: tuple[str, ...] = ()


_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", DPMSolverMultistepScheduler,
                {"algorithm_type": "dpmsolver++", "solver_order": 2}, automatic=KARRAS,
                aliases=("k_dpmpp_2m",)),
    SamplerSpec("DPM++ SDE", DPMSolverSinglestepSpacedScheduler,
                # lower_order_final: what the scheduler switches to anyway with final sigma 0.
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": True},
                automatic=KARRAS, aliases=("k_dpmpp_sde",)),
    SamplerSpec("DPM++ 2M SDE", DPMSolverMultistepScheduler,
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, automatic=EXPONENTIAL,
                aliases=("k_dpmpp_2m_sde",)),
    SamplerSpec("DPM++ 3M SDE", DPMSolverMultistepScheduler,
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, automatic=EXPONENTIAL,
                aliases=("k_dpmpp_3m_sde",)),
    SamplerSpec("Euler a", EulerAncestralSigmasScheduler, aliases=("k_euler_a", "k_euler_ancestral")),
    SamplerSpec("Euler", EulerDiscreteScheduler, aliases=("k_euler",)),
    SamplerSpec("LMS", LMSDiscreteScheduler, aliases=("k_lms",)),
    SamplerSpec("Heun", HeunDiscreteScheduler, aliases=("k_heun",)),
    SamplerSpec("DPM2", KDPM2DiscreteScheduler, automatic=KARRAS, aliases=("k_dpm_2",)),
    SamplerSpec("DPM2 a", KDPM2AncestralDiscreteScheduler, automatic=KARRAS, aliases=("k_dpm_2_a",)),
    SamplerSpec("DDIM", DDIMScheduler, schedules=_SPACING_ONLY),
    SamplerSpec("PLMS", PNDMScheduler, {"skip_prk_steps": True}, schedules=_SPACING_ONLY),
    # A1111's UniPC defaults: variant bh1, order 3, lower order at the end. Like the
    # original UniPC it stops at the smallest sigma: bh1 divides by zero (NaN
    # images) when diffusers' last sigma is 0.
    SamplerSpec("UniPC", UniPCMultistepScheduler,
                {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True,
                 "final_sigmas_type": "sigma_min"}),
    # Consistency samplers: the distillation schedule, or SGM uniform (see _ConsistencyTimesteps).
    SamplerSpec("LCM", LCMSamplerScheduler, schedules=(AUTOMATIC, SGM_UNIFORM), aliases=("k_lcm",)),
    SamplerSpec("TCD", TCDSamplerScheduler, {"gamma": TCD_GAMMA}, schedules=(AUTOMATIC, SGM_UNIFORM)),
)

# A1111's API and settings also use lower-case schedule keys.
_SCHEDULE_ALIASES: dict[str, str] = {
    **{label.lower(): label for label in SCHEDULE_TYPES},
    "sgm_uniform": SGM_UNIFORM,
}


def resolve_schedule_type(name: str) -> str:
    """Canonical schedule type for a label or A1111 key ("karras", "sgm_uniform")."""
    key = name.strip().lower()
    if key in _SCHEDULE_ALIASES:
        return _SCHEDULE_ALIASES[key]
    raise ValueError(f"unknown schedule type {name!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")


class SamplerCatalog:
    """The samplers one studio offers: the built-in table, plus those extensions add (`with_extra`).

    Immutable: the studio builds its own at start and hands it to whatever validates or runs requests.
    """

    def __init__(self, specs: tuple[SamplerSpec, ...]) -> None:
        self.specs = specs
        self._by_name = {spec.name: spec for spec in specs}
        self._aliases: dict[str, str] = {}
        for spec in specs:
            for alias in (spec.name, *spec.aliases):
                self._aliases.setdefault(alias.lower(), spec.name)

    def with_extra(self, specs: tuple[SamplerSpec, ...]) -> "SamplerCatalog":
        for spec in specs:
            taken = [n for n in (spec.name, *spec.aliases) if n.lower() in self._aliases]
            if taken:
                raise ValueError(f"sampler name {taken[0]!r} is taken")
        return SamplerCatalog(self.specs + tuple(specs))

    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def knows(self, name: str) -> bool:
        return name in self._by_name

    def resolve(self, name: str) -> str:
        """Canonical sampler name for a name or A1111 alias ("k_euler_a", "Euler A")."""
        key = name.strip().lower()
        if key in self._aliases:
            return self._aliases[key]
        sampler, _ = self.split_legacy_name(name)
        if sampler != name:
            return sampler
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(self.names())}")

    def split_legacy_name(self, name: str) -> tuple[str, str | None]:
        """Split an old combined name ("DPM++ 2M Karras") into (sampler, schedule type).

        Before A1111 1.9 the schedule was part of the sampler name; infotexts and API
        clients from that time still send such names. Unknown names come back as is.
        """
        text = name.strip()
        for suffix in (KARRAS, EXPONENTIAL, SGM_UNIFORM):
            if text.lower().endswith(" " + suffix.lower()):
                base = text[: -len(suffix)].strip().lower()
                if base in self._aliases:
                    return self._aliases[base], suffix
        return name, None

    def spec(self, name: str) -> SamplerSpec:
        return self._by_name[self.resolve(name)]

    def aliases(self, name: str) -> list[str]:
        """The other names A1111 accepts for a sampler (k-diffusion's function names)."""
        return list(self.spec(name).aliases)

    def schedule_types_for(self, name: str) -> list[str]:
        """The schedule types this sampler can honour, "Automatic" first."""
        return list(self.spec(name).schedules)

    def effective_schedule(self, name: str, schedule_type: str) -> str | None:
        """What a schedule type means for a sampler: "Automatic" resolved.

        None means the model's own timestep spacing. Raises ValueError for a
        combination the sampler cannot do.
        """
        spec = self.spec(name)
        schedule = resolve_schedule_type(schedule_type)
        if schedule not in spec.schedules:
            raise ValueError(
                f"sampler {spec.name!r} cannot use schedule type {schedule!r}; "
                f"it supports: {', '.join(spec.schedules)}"
            )
        return spec.automatic if schedule == AUTOMATIC else schedule

    def scheduler_label(self, name: str, schedule_type: str) -> str:
        """The "Schedule type" value for infotext, as requested ("Automatic" stays).

        Validates the pair, so an infotext never names a combination we did not run.
        """
        self.effective_schedule(name, schedule_type)
        return resolve_schedule_type(schedule_type)

    def make_scheduler(self, name: str, schedule_type: str, base_config: Mapping[str, Any],
                       prediction_type: str | None = None):
        """A new scheduler instance for this sampler and schedule type.

        `base_config` is the checkpoint's scheduler config (`pipe.scheduler.config`);
        its noise schedule (betas, prediction type, timestep spacing) is kept.
        `prediction_type` overrides the config's when the model's detected variant
        knows better (e.g. SD2 768-v). Raises ValueError for an unknown sampler or a
        schedule type the sampler cannot do.
        """
        spec = self.spec(name)
        schedule = self.effective_schedule(spec.name, schedule_type)
        cls = spec.scheduler_cls
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}

        config: dict[str, Any] = dict(_MODEL_DEFAULTS)
        config.update({k: base_config[k] for k in _MODEL_KEYS if k in base_config})
        if prediction_type:
            config["prediction_type"] = prediction_type
        config.update(spec.options)
        config.update(_schedule_flags(schedule, accepted))
        # Drop what this class does not take (e.g. LMS has no rescale_betas_zero_snr).
        return cls.from_config({k: v for k, v in config.items() if k in accepted})


def _schedule_flags(schedule: str | None, accepted: set[str]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if "use_karras_sigmas" in accepted:
        flags["use_karras_sigmas"] = schedule == KARRAS
        flags["use_exponential_sigmas"] = schedule == EXPONENTIAL
        flags["use_beta_sigmas"] = False
    if schedule in (UNIFORM, KARRAS, EXPONENTIAL) and "timestep_spacing" in accepted:
        # k-diffusion's uniform: t from t_max down to 0. For Karras/exponential,
        # diffusers takes sigma_max/min from the spaced timesteps; "linspace" makes
        # them the model's full range, as in A1111 ("leading" would start lower).
        flags["timestep_spacing"] = "linspace"
    elif schedule == SGM_UNIFORM:
        flags["timestep_spacing"] = "trailing"  # the SGM-uniform spacing
    return flags


# The built-in table, and its methods under the names the rest of the studio has always used.
BUILTIN_SAMPLERS = SamplerCatalog(_SPECS)
SAMPLER_NAMES: tuple[str, ...] = BUILTIN_SAMPLERS.names()
resolve_sampler_name = BUILTIN_SAMPLERS.resolve
split_legacy_sampler_name = BUILTIN_SAMPLERS.split_legacy_name
sampler_aliases = BUILTIN_SAMPLERS.aliases
schedule_types_for = BUILTIN_SAMPLERS.schedule_types_for
effective_schedule = BUILTIN_SAMPLERS.effective_schedule
scheduler_label = BUILTIN_SAMPLERS.scheduler_label
make_scheduler = BUILTIN_SAMPLERS.make_scheduler
