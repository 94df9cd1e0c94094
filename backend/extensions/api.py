"""The plugin API: the one object an extension's `register(api)` receives, and the only part of the studio
an extension may use. Versioned semantically (`API_VERSION`): a new hook is a minor version, a changed or
removed one a major version; an extension declares the range it works with in its manifest.

Hooks of API 1.0 (more come with later minor versions):
- `api.transform_prompt(fn)`: `fn(prompt, negative_prompt, request) -> (prompt, negative_prompt)`, run
  on the final texts (styles applied) before they are parsed; what dynamic prompts needs.
- `api.before_job(fn)`: `fn(request)`, before a txt2img / img2img job takes its turn on the device.
- `api.after_job(fn)`: `fn(request, result)`, after it finished (result: images, infotexts, seeds, ...).
- `api.extension_args(request)`: this extension's entry of `request.extension_args` (a dict, maybe empty).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

API_VERSION = "1.0.0"

log = logging.getLogger(__name__)

PromptTransform = Callable[[str, str, Any], tuple[str, str]]
JobHook = Callable[..., None]


@dataclass
class Hooks:
    """Every registered hook, in load order, each with the id of the extension that added it."""

    prompt_transforms: list[tuple[str, PromptTransform]] = field(default_factory=list)
    before_job: list[tuple[str, JobHook]] = field(default_factory=list)
    after_job: list[tuple[str, JobHook]] = field(default_factory=list)

    def merge(self, other: "Hooks") -> None:
        """Add `other`'s hooks after these (an extension's, once its register() returned)."""
        for hook_list in fields(self):
            getattr(self, hook_list.name).extend(getattr(other, hook_list.name))

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

    def run(self, which: str, *args) -> list[str]:
        """Run the before_job or after_job hooks; a warning per hook that raised."""
        warnings = []
        for ext_id, hook in getattr(self, which):
            try:
                hook(*args)
            except Exception as exc:  # noqa: BLE001
                log.exception("extension %s: %s hook failed", ext_id, which)
                warnings.append(f"extension {ext_id}: its {which.replace('_', ' ')} hook failed ({exc})")
        return warnings


class ExtensionApi:
    """What `register(api)` gets; one per extension, so each hook knows whose it is."""

    version = API_VERSION

    def __init__(self, ext_id: str, hooks: Hooks) -> None:
        self.ext_id = ext_id
        self._hooks = hooks

    def transform_prompt(self, fn: PromptTransform) -> PromptTransform:
        self._hooks.prompt_transforms.append((self.ext_id, fn))
        return fn

    def before_job(self, fn: JobHook) -> JobHook:
        self._hooks.before_job.append((self.ext_id, fn))
        return fn

    def after_job(self, fn: JobHook) -> JobHook:
        self._hooks.after_job.append((self.ext_id, fn))
        return fn

    def extension_args(self, request) -> dict:
        return dict(getattr(request, "extension_args", {}).get(self.ext_id, {}))
