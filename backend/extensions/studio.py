"""Where extensions meet the studio at start-up: the names they may not take, and their registrations
(settings, upscalers, preprocessors) handed to the libraries that serve them."""
from __future__ import annotations

from typing import Any

from backend.extensions.api import Hooks
from backend.extensions.scripts import BUILTIN_SCRIPTS
from backend.extras.upscalers.files import BUILTIN_UPSCALERS
from backend.generation.request import LATENT_UPSCALERS
from backend.generation.samplers import BUILTIN_SAMPLERS, SamplerCatalog, SamplerSpec

# The studio's own tabs and accordions (ui/app.py, ui/txt2img.py, ui/img2img.py).
STUDIO_TABS = ("txt2img", "img2img", "Extras", "PNG Info", "Settings", "Extensions")
STUDIO_ACCORDIONS = ("ControlNet", "Hires. fix", "Script", "IP-Adapter")


def reserved_names(options, control) -> dict[str, set[str]]:
    """Per kind of registration, the names that are the studio's (compared without case)."""
    return {
        "tabs": set(STUDIO_TABS),
        "controls": set(STUDIO_ACCORDIONS),
        "settings": set(options.all_options()),
        "scripts": {s.title for s in BUILTIN_SCRIPTS} | {"ControlNet"},
        # The files of models/ESRGAN... are not read here (a slow start); an extension's name wins over theirs.
        "upscalers": set(BUILTIN_UPSCALERS) | set(LATENT_UPSCALERS),
        "preprocessors": {n for spec in control.preprocessors.specs() for n in (spec.name, *spec.aliases)},
        "samplers": {n for spec in BUILTIN_SAMPLERS.specs for n in (spec.name, *spec.aliases)},
    }


def hand_over(hooks: Hooks, options, extras, control) -> None:
    """Give the libraries what the loaded extensions registered."""
    options.add_extra_defaults({setting.key: setting.default for _, setting in hooks.settings})
    for _, upscaler in hooks.upscalers:
        extras.upscalers.add_extension_upscaler(upscaler)
    for _, entry in hooks.preprocessors:
        control.preprocessors.add_entry(entry)


def sampler_catalog(hooks: Hooks) -> SamplerCatalog:
    """The studio's samplers: the built-in table, then the extensions' (their names were checked free)."""
    return BUILTIN_SAMPLERS.with_extra(tuple(
        SamplerSpec(s.name, s.scheduler_class, dict(s.options), tuple(s.schedule_types), aliases=tuple(s.aliases))
        for _, s in hooks.samplers))


def current_values(options) -> Any:
    """What `api.option()` reads: the extra options, extensions' settings among them."""
    return lambda: options.extra_options
