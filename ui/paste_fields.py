"""Infotext -> tab fields: what PNG Info's "Send to" buttons and the paste button fill.

Each tab lists (component, reader) pairs; a reader takes the parsed infotext
and returns the value for its component, or SKIP to leave the field alone.
Keys an infotext leaves out get A1111's defaults where A1111 gives them one
(Clip skip 1, Schedule type Automatic, Mask mode "Inpaint masked"...), so a
pasted picture is reproduced rather than mixed with the previous settings.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from backend.control.infotext import units_from_infotext
from backend.generation.request import MASKED_CONTENT
from backend.generation.samplers import BUILTIN_SAMPLERS, SCHEDULE_TYPES, SamplerCatalog, resolve_schedule_type
from backend.images.infotext import parse_infotext
from backend.images.resize import RESIZE_MODES
from backend.sdxl.size_conditioning import SizeConditioning

SKIP = object()
Reader = Callable[[dict[str, str]], Any]
PasteTarget = list[tuple[gr.components.Component, Reader]]

_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1", "Hires steps")


def _number(key: str, kind: type = int, default: Any = SKIP) -> Reader:
    def read(params: dict[str, str]) -> Any:
        if key not in params:
            return default
        try:
            return kind(float(params[key])) if kind is int else kind(params[key])
        except ValueError:
            return SKIP
    return read


def _text(key: str, default: Any = SKIP) -> Reader:
    return lambda params: params.get(key, default)


def _sampler(samplers: SamplerCatalog) -> Reader:
    def read(params: dict[str, str]) -> Any:
        if "Sampler" not in params:
            return SKIP
        try:
            return samplers.resolve(params["Sampler"])
        except ValueError:
            return SKIP
    return read


def _schedule(samplers: SamplerCatalog) -> Reader:
    def read(params: dict[str, str]) -> Any:
        if "Schedule type" in params:
            try:
                return resolve_schedule_type(params["Schedule type"])
            except ValueError:
                return SKIP
        _, legacy = samplers.split_legacy_name(params.get("Sampler", ""))
        return legacy or SCHEDULE_TYPES[0]
    return read


def _choice(key: str, choices: tuple[str, ...], default: str) -> Reader:
    return lambda params: params.get(key, default) if params.get(key, default) in choices else SKIP


def common_readers(prompt, negative, sampler, schedule, steps, cfg, seed, width, height, clip_skip,
                   samplers: SamplerCatalog = BUILTIN_SAMPLERS) -> PasteTarget:
    """`samplers`: the studio's (an infotext may name an extension's sampler)."""
    return [
        (prompt, _text("Prompt")),
        (negative, _text("Negative prompt", "")),
        (sampler, _sampler(samplers)),
        (schedule, _schedule(samplers)),
        (steps, _number("Steps")),
        (cfg, _number("CFG scale", float)),
        (seed, _number("Seed")),
        (width, _number("Size-1")),
        (height, _number("Size-2")),
        (clip_skip, _number("Clip skip", int, 1)),
    ]


def seed_extra_readers(seed_widgets) -> PasteTarget:
    """A1111's Variation seed / strength / Seed resize from; absent = off, and "Extra" opens when present."""
    return [
        (seed_widgets.extra, lambda params: any(k in params for k in ("Variation seed", "Seed resize from-1")) or SKIP),
        (seed_widgets.subseed, _number("Variation seed", int, -1)),
        (seed_widgets.subseed_strength, _number("Variation seed strength", float, 0.0)),
        (seed_widgets.resize_w, _number("Seed resize from-1", int, 0)),
        (seed_widgets.resize_h, _number("Seed resize from-2", int, 0)),
    ]


def tiling_reader(checkbox) -> PasteTarget:
    return [(checkbox, lambda params: params.get("Tiling") == "True")]


def restore_faces_reader(checkbox) -> PasteTarget:
    """A1111 writes "Face restoration: CodeFormer" only when the box was ticked."""
    return [(checkbox, lambda params: "Face restoration" in params)]


def sdxl_size_readers(numbers, fields: list[str]) -> PasteTarget:
    """The SDXL size-conditioning numbers; an infotext without them resets them to 0 (the picture's size)."""
    return [(number, lambda params, field=field: getattr(SizeConditioning.from_infotext(params), field) or 0)
            for number, field in zip(numbers, fields)]


def match_checkpoint(value: str, titles: list[str]) -> str | None:
    """The listed title an infotext's "name [hash]" means: by title, then name (with or without the file's
    extension, or its folder), then hash, as A1111's closest-checkpoint match."""
    wanted = value.strip()
    name, _, rest = wanted.partition(" [")
    shorthash = rest[:-1].lower() if rest.endswith("]") else ""

    def names(title: str) -> set[str]:
        plain = title.split(" [")[0]
        stem = plain.rsplit(".", 1)[0] if "." in plain.rsplit("/", 1)[-1] else plain
        return {plain, stem, plain.rsplit("/", 1)[-1], stem.rsplit("/", 1)[-1]}

    for match in (lambda t: t == wanted, lambda t: name in names(t),
                  lambda t: bool(shorthash) and t.lower().endswith(f" [{shorthash}]")):
        found = [t for t in titles if match(t)]
        if found:
            return found[0]
    return None


def refiner_readers(enabled, checkpoint, switch_at, titles: Callable[[], list[str]]) -> PasteTarget:
    """A1111's "Refiner: name [hash]" and "Refiner switch at"; `titles`: the checkpoints listed now.

    An infotext without a refiner turns it off; one naming a checkpoint this studio lacks too (with a
    warning): another refiner would not reproduce the picture."""
    def found(params: dict[str, str]) -> str | None:
        return match_checkpoint(params["Refiner"], titles()) if params.get("Refiner") else None

    def read_enabled(params: dict[str, str]) -> bool:
        if not params.get("Refiner"):
            return False
        if found(params) is None:
            gr.Warning(f"The refiner {params['Refiner']} is not in the checkpoint list: the refiner is off")
            return False
        return True

    def read_checkpoint(params: dict[str, str]) -> Any:
        title = found(params)
        return SKIP if title is None else gr.update(choices=titles(), value=title)

    return [
        (enabled, read_enabled),
        (checkpoint, read_checkpoint),
        (switch_at, lambda params: _number("Refiner switch at", float)(params) if found(params) else SKIP),
    ]


def hires_readers(enabled, upscaler, steps, denoise, scale, resize_x, resize_y) -> PasteTarget:
    return [
        (enabled, lambda params: any(k in params for k in _HIRES_KEYS)),
        (upscaler, _text("Hires upscaler")),
        (steps, _number("Hires steps", int, 0)),
        (denoise, lambda params: _number("Denoising strength", float)(params)
         if any(k in params for k in _HIRES_KEYS) else SKIP),
        (scale, _number("Hires upscale", float)),
        (resize_x, _number("Hires resize-1", int, 0)),
        (resize_y, _number("Hires resize-2", int, 0)),
    ]


def img2img_readers(denoise, resize_mode, mask_blur, mask_mode, masked_content, inpaint_area,
                    padding) -> PasteTarget:
    return [
        (denoise, _number("Denoising strength", float)),
        (resize_mode, _choice("Resize mode", RESIZE_MODES, "Just resize")),
        (mask_blur, _number("Mask blur", int)),
        (mask_mode, _choice("Mask mode", ("Inpaint masked", "Inpaint not masked"), "Inpaint masked")),
        (masked_content, _choice("Masked content", MASKED_CONTENT, "original")),
        (inpaint_area, _choice("Inpaint area", ("Whole picture", "Only masked"), "Whole picture")),
        (padding, _number("Masked area padding", int, 32)),
    ]


def paste_values(text: str | None, target: PasteTarget) -> list[Any]:
    """One value per target component: the infotext's, or gr.skip() to keep the field."""
    if not text or not text.strip():
        return [gr.skip()] * len(target)
    params = parse_infotext(text)
    values = []
    for _, read in target:
        value = read(params)
        values.append(gr.skip() if value is SKIP else value)
    return values


def components(target: PasteTarget) -> list:
    return [component for component, _ in target]


def control_readers(units) -> PasteTarget:
    """sd-webui-controlnet's "ControlNet N" entries -> the unit tabs (settings, not images).

    `units` are ui.controlnet.UnitWidgets; a unit the infotext does not name is
    switched off, so a pasted picture is reproduced with exactly its units.
    IP-Adapter entries fill a unit tab too, as in sd-webui-controlnet.
    """
    target: PasteTarget = []
    for index, widgets in enumerate(units):
        def read(params, index=index, field=None):
            unit = units_from_infotext(params).get(index)
            if field == "enabled":
                return unit is not None
            if unit is None:
                return SKIP
            return getattr(unit, field)
        for component, field in ((widgets.enabled, "enabled"), (widgets.module, "module"), (widgets.model, "model"),
                                 (widgets.weight, "weight"), (widgets.start, "guidance_start"),
                                 (widgets.end, "guidance_end"), (widgets.control_mode, "control_mode"),
                                 (widgets.resize_mode, "resize_mode"), (widgets.pixel_perfect, "pixel_perfect"),
                                 (widgets.processor_res, "processor_res"), (widgets.threshold_a, "threshold_a"),
                                 (widgets.threshold_b, "threshold_b"), (widgets.hr_option, "hr_option")):
            target.append((component, lambda params, read=read, field=field: read(params, field=field)))
    return target
