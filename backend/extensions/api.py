"""The plugin API: the one object an extension's `register(api)` receives, and the only part of the studio
an extension may use (the types it needs are re-exported here). Versioned semantically (`API_VERSION`): a
new hook is a minor version, a changed or removed one a major version; an extension declares the range it
works with in its manifest. docs/extensions.md documents every hook with an example.

Hooks of API 1.2 (1.2 added `add_sampler`):
- `transform_prompt(fn)`: `fn(prompt, negative, request) -> (prompt, negative)`, on the job's texts (styles
  applied) before they are parsed.
- `expand_prompts(fn)`: `fn(prompts, negatives, seeds, request) -> (prompts, negatives)`, one text per
  picture (what dynamic prompts needs: each picture may get its own prompt).
- `before_job(fn)`: `fn(request)`; `after_job(fn)`: `fn(request, result)`.
- `on_step(fn)`: `fn(StepInfo)` after every sampling step (latents, step, timestep, total).
- `postprocess(fn)`: `fn(ImageToPostprocess)` for each finished picture: replace `.image`, add `.params`.
- `add_script(Script)`: an entry of the Script dropdown (and the API's script_name) that runs a whole job.
- `add_controls(Controls)`: an accordion on txt2img / img2img; values arrive in `extension_args(request)`.
  An `Arg` may follow others (`depends_on`): its choices and visibility are asked again when they change.
- `add_tab(Tab)`, `add_setting(Setting)` (read with `option(key)`), `add_route(Route)` (under /ext/<id>/),
  `add_upscaler(Upscaler)`, `add_preprocessor(...)`, `add_sampler(Sampler)` (its name and aliases).
An extension cannot take a name the studio or an earlier extension has (a tab, a setting, a script...):
the call raises NameTakenError, so the extension fails to load with that reason.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from backend.extensions.specs import (
    Arg,
    Choices,
    Controls,
    ImageToPostprocess,
    Route,
    Sampler,
    Script,
    ScriptRun,
    Setting,
    StepInfo,
    Tab,
    Upscaler,
    check_dependencies,
)
from backend.generation.samplers import SCHEDULE_TYPES

API_VERSION = "1.2.0"

__all__ = ["API_VERSION", "Arg", "Choices", "Controls", "ExtensionApi", "Hooks", "ImageToPostprocess",
           "NameTakenError", "Route", "Sampler", "Script", "ScriptRun", "Setting", "StepInfo", "Tab", "Upscaler"]

log = logging.getLogger(__name__)

PromptTransform = Callable[[str, str, Any], tuple[str, str]]
PromptExpander = Callable[[list[str], list[str], list[int], Any], tuple[list[str], list[str]]]
JobHook = Callable[..., None]


class NameTakenError(ValueError):
    """An extension asked for a name (tab, setting, script, upscaler...) that is already the studio's."""


@dataclass
class Hooks:
    """Every registered hook, in load order, each with the id of the extension that added it."""

    prompt_transforms: list[tuple[str, PromptTransform]] = field(default_factory=list)
    prompt_expanders: list[tuple[str, PromptExpander]] = field(default_factory=list)
    before_job: list[tuple[str, JobHook]] = field(default_factory=list)
    after_job: list[tuple[str, JobHook]] = field(default_factory=list)
    step_callbacks: list[tuple[str, Callable[[StepInfo], None]]] = field(default_factory=list)
    postprocess: list[tuple[str, Callable[[ImageToPostprocess], None]]] = field(default_factory=list)
    scripts: list[tuple[str, Script]] = field(default_factory=list)
    controls: list[tuple[str, Controls]] = field(default_factory=list)
    tabs: list[tuple[str, Tab]] = field(default_factory=list)
    settings: list[tuple[str, Setting]] = field(default_factory=list)
    routes: list[tuple[str, Route]] = field(default_factory=list)
    upscalers: list[tuple[str, Upscaler]] = field(default_factory=list)
    preprocessors: list[tuple[str, Any]] = field(default_factory=list)  # (ext id, control Entry)
    samplers: list[tuple[str, Sampler]] = field(default_factory=list)

    def merge(self, other: "Hooks") -> None:
        """Add `other`'s hooks after these (an extension's, once its register() returned)."""
        for hook_list in fields(self):
            getattr(self, hook_list.name).extend(getattr(other, hook_list.name))

    def names(self, which: str) -> set[str]:
        """The lower-case names taken in one kind of registration (tabs, settings, scripts, ...)."""
        return {name.lower() for _, item in getattr(self, which)
                for name in (_name_of(item), *getattr(item, "aliases", ()))}

    def transform_prompts(self, prompt: str, negative: str, request) -> tuple[str, str, list[str]]:
        """The texts after every transformer, and a warning per transformer that failed (it is skipped)."""
        warnings = []
        for ext_id, transform in self.prompt_transforms:
            try:
                prompt, negative = transform(prompt, negative, request)
            except Exception as exc:  # noqa: BLE001 - one broken extension must not break the job
                log.exception("extension %s: prompt transformer failed", ext_id)
                warnings.append(f"extension {ext_id}: its prompt transformer failed ({exc}); prompt used as written")
        return prompt, negative, warnings

    def expand_prompts(self, prompt: str, negative: str, seeds: list[int],
                       request) -> tuple[list[str], list[str], list[str]]:
        """One (prompt, negative) per seed after every expander, and a warning per expander that failed."""
        prompts, negatives, warnings = [prompt] * len(seeds), [negative] * len(seeds), []
        for ext_id, expand in self.prompt_expanders:
            try:
                new_prompts, new_negatives = expand(list(prompts), list(negatives), list(seeds), request)
                if len(new_prompts) != len(seeds) or len(new_negatives) != len(seeds):
                    raise ValueError(f"it gave {len(new_prompts)} prompts for {len(seeds)} pictures")
                prompts, negatives = [str(p) for p in new_prompts], [str(n) for n in new_negatives]
            except Exception as exc:  # noqa: BLE001
                log.exception("extension %s: prompt expander failed", ext_id)
                warnings.append(f"extension {ext_id}: its prompt expander failed ({exc}); prompts used as before")
        return prompts, negatives, warnings

    def run(self, which: str, *args) -> list[str]:
        """Run the hooks of one list (before_job, after_job, step_callbacks, postprocess); a warning per
        hook that raised."""
        warnings = []
        for ext_id, hook in getattr(self, which):
            try:
                hook(*args)
            except Exception as exc:  # noqa: BLE001
                log.exception("extension %s: %s hook failed", ext_id, which)
                warnings.append(f"extension {ext_id}: its {which.replace('_', ' ')} hook failed ({exc})")
        return warnings

    def find_script(self, title: str) -> tuple[str, Script] | None:
        wanted = title.strip().lower()
        return next(((ext, s) for ext, s in self.scripts if s.title.lower() == wanted), None)


def _name_of(item: Any) -> str:
    for attribute in ("title", "key", "name", "path"):
        if hasattr(item, attribute):
            return str(getattr(item, attribute))
    return str(getattr(getattr(item, "spec", None), "name", item))


class ExtensionApi:
    """What `register(api)` gets; one per extension, so each hook knows whose it is.

    `reserved` holds the studio's own names per kind (its tabs, settings, scripts, upscalers...) and
    `taken` the hooks of the extensions loaded before this one: a new name must be free in both.
    """

    version = API_VERSION

    def __init__(self, ext_id: str, hooks: Hooks, reserved: Mapping[str, set[str]] | None = None,
                 taken: Hooks | None = None, options: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.ext_id = ext_id
        self._hooks = hooks
        self._reserved = {k: {n.lower() for n in v} for k, v in (reserved or {}).items()}
        self._taken = taken or Hooks()
        self._options = options or dict

    # --- prompts and jobs ---
    def transform_prompt(self, fn: PromptTransform) -> PromptTransform:
        self._hooks.prompt_transforms.append((self.ext_id, fn))
        return fn

    def expand_prompts(self, fn: PromptExpander) -> PromptExpander:
        self._hooks.prompt_expanders.append((self.ext_id, fn))
        return fn

    def before_job(self, fn: JobHook) -> JobHook:
        self._hooks.before_job.append((self.ext_id, fn))
        return fn

    def after_job(self, fn: JobHook) -> JobHook:
        self._hooks.after_job.append((self.ext_id, fn))
        return fn

    def on_step(self, fn: Callable[[StepInfo], None]) -> Callable[[StepInfo], None]:
        self._hooks.step_callbacks.append((self.ext_id, fn))
        return fn

    def postprocess(self, fn: Callable[[ImageToPostprocess], None]) -> Callable[[ImageToPostprocess], None]:
        self._hooks.postprocess.append((self.ext_id, fn))
        return fn

    def extension_args(self, request) -> dict:
        """This extension's entry of `request.extension_args` (its accordion's values; maybe empty)."""
        return dict(getattr(request, "extension_args", {}).get(self.ext_id, {}))

    # --- things with names ---
    def add_script(self, script: Script) -> Script:
        check_dependencies(script.args)  # a misspelt depends_on fails here, with the reason
        return self._add("scripts", script)

    def add_controls(self, controls: Controls) -> Controls:
        check_dependencies(controls.args)
        return self._add("controls", controls)

    def add_tab(self, tab: Tab) -> Tab:
        return self._add("tabs", tab)

    def add_setting(self, setting: Setting) -> Setting:
        return self._add("settings", Setting(**{**setting.__dict__, "key": self.setting_key(setting.key)}))

    def add_route(self, route: Route) -> Route:
        if not route.path.startswith("/"):
            raise ValueError(f"route path {route.path!r} must start with /")
        if any(r.path == route.path for _, r in self._hooks.routes):  # under its own prefix: no one else's
            raise NameTakenError(f"route {route.path!r} is registered twice")
        self._hooks.routes.append((self.ext_id, route))
        return route

    def add_upscaler(self, upscaler: Upscaler) -> Upscaler:
        return self._add("upscalers", upscaler)

    def add_preprocessor(self, name: str, run: Callable[..., Any], *, category: str = "",
                         threshold_a: tuple[str, float, float, float] | None = None,
                         threshold_b: tuple[str, float, float, float] | None = None) -> None:
        """A ControlNet preprocessor: `run(pixels, threshold_a, threshold_b) -> pixels` (HxWx3 uint8 arrays
        at the unit's processor resolution); thresholds as (label, minimum, maximum, default)."""
        from backend.control.preprocessors.spec import Entry, PreprocessorSpec, Slider

        def slider(given):
            return Slider(given[0], given[1], given[2], given[3], (given[2] - given[1]) / 100) if given else None

        spec = PreprocessorSpec(name=name, threshold_a=slider(threshold_a), threshold_b=slider(threshold_b),
                                category=category)
        self._check_free("preprocessors", name)
        self._hooks.preprocessors.append((self.ext_id, Entry(spec, lambda job, pixels, a, b: run(pixels, a, b))))

    def add_sampler(self, sampler: Sampler) -> Sampler:
        """A sampler of the Sampling method dropdown, the API's sampler_name and X/Y/Z's Sampler axis."""
        if not (isinstance(sampler.scheduler_class, type) and hasattr(sampler.scheduler_class, "from_config")):
            raise TypeError(f"sampler {sampler.name!r}: scheduler_class must be a diffusers scheduler class")
        unknown = [t for t in sampler.schedule_types if t not in SCHEDULE_TYPES]
        if unknown or not sampler.schedule_types:
            raise ValueError(f"sampler {sampler.name!r}: schedule types must be some of {', '.join(SCHEDULE_TYPES)}")
        for name in sampler.aliases:  # an alias must be as free as the name
            self._check_free("samplers", name)
        return self._add("samplers", sampler)

    # --- settings ---
    def setting_key(self, key: str) -> str:
        """The key an extension setting has in config.json: prefixed with the extension's id."""
        prefix = f"{self.ext_id}_"
        return key if key.startswith(prefix) else prefix + key

    def option(self, key: str, default: Any = None) -> Any:
        """The current value of one of this extension's settings (its default until changed)."""
        full = self.setting_key(key)
        values = self._options()
        if full in values:
            return values[full]
        own = next((s for _, s in self._hooks.settings + self._taken.settings if s.key == full), None)
        return own.default if own is not None else default

    def _check_free(self, kind: str, name: str) -> None:
        lowered = name.lower()
        if lowered in self._reserved.get(kind, set()):
            raise NameTakenError(f"{kind[:-1]} {name!r} is built into the studio: refused")
        if lowered in self._taken.names(kind) or lowered in self._hooks.names(kind):
            raise NameTakenError(f"{kind[:-1]} {name!r} is taken by an extension loaded before: refused")

    def _add(self, kind: str, item):
        self._check_free(kind, _name_of(item))
        getattr(self._hooks, kind).append((self.ext_id, item))
        return item
