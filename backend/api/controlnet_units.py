"""sd-webui-controlnet's API units -> the studio's ControlUnit.

Clients send `"alwayson_scripts": {"ControlNet": {"args": [unit, ...]}}` (the key
in any case). A unit is a dict with sd-webui-controlnet's field names; the legacy
ones (`input_image`, `lowvram`, `guidance`, `guessmode`) still arrive from older
clients such as webuiapi. Fields this studio does not use (`save_detected_map`,
`advanced_weighting`, ...) are accepted, as there. Units that are disabled, have
no model, or are missing are skipped.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from pydantic import ValidationError

from backend.control.units import CONTROL_MODES, HIRES_OPTIONS, UNIT_RESIZE_MODES, ControlUnit

CONTROLNET_SCRIPT = "controlnet"

# sd-webui-controlnet's older names for the resize modes
_RESIZE_ALIASES = {"Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill",
                   "Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill"}


class UnitError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


def controlnet_args(alwayson: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """(the key used, its unit list) of the ControlNet script in `alwayson_scripts`, if there."""
    for key, value in alwayson.items():
        if key.lower() == CONTROLNET_SCRIPT:
            args = value.get("args", []) if isinstance(value, dict) else value
            return key, list(args or [])
    return None, []


def _choice(value: Any, choices: tuple[str, ...], aliases: dict[str, str], where: str) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(choices):
            return choices[index]
    elif isinstance(value, str):
        name = aliases.get(value, value)
        for choice in choices:
            if choice.lower() == name.lower():
                return choice
    raise UnitError([(where, f"must be one of {', '.join(choices)} (or 0..{len(choices) - 1}), got {value!r}")])


def _image_and_mask(raw: dict[str, Any], open_image: Callable[[str, str], Image.Image],
                    where: str) -> tuple[Image.Image | None, Image.Image | None]:
    data = raw.get("image") or raw.get("input_image")
    mask = raw.get("mask")
    if isinstance(data, dict):  # {"image": ..., "mask": ...}, as the ControlNet UI's own payloads
        mask = data.get("mask") or mask
        data = data.get("image")
    try:
        image = open_image(data, f"{where}.image") if data else None
        mask_image = open_image(mask, f"{where}.mask") if isinstance(mask, str) and mask else None
    except ValueError as err:
        raise UnitError([(f"{where}.image", str(err))]) from None
    return image, mask_image


def unit_from_api(raw: Any, index: int, open_image: Callable[[str, str], Image.Image]) -> ControlUnit | None:
    """One API unit, or None for a unit sd-webui-controlnet would skip. Raises UnitError naming the field."""
    where = f"alwayson_scripts.ControlNet.args.{index}"
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise UnitError([(where, f"a unit must be an object with sd-webui-controlnet's fields, got {type(raw).__name__}")])
    enabled = raw.get("enabled", True)
    model = raw.get("model") or "None"
    if not enabled or str(model).lower() in ("", "none"):
        return None
    fields: dict[str, Any] = {"enabled": True, "module": str(raw.get("module") or "none"), "model": str(model)}
    for name in ("weight", "processor_res", "threshold_a", "threshold_b", "guidance_start", "pixel_perfect"):
        if raw.get(name) is not None:
            fields[name] = raw[name]
    end = raw.get("guidance_end", raw.get("guidance"))
    if end is not None:
        fields["guidance_end"] = end
    if raw.get("resize_mode") is not None:
        fields["resize_mode"] = _choice(raw["resize_mode"], UNIT_RESIZE_MODES, _RESIZE_ALIASES, f"{where}.resize_mode")
    if raw.get("control_mode") is not None:
        fields["control_mode"] = _choice(raw["control_mode"], CONTROL_MODES, {}, f"{where}.control_mode")
    elif raw.get("guessmode"):  # the old "Guess Mode" is what "ControlNet is more important" replaced
        fields["control_mode"] = "ControlNet is more important"
    if raw.get("hr_option") is not None:
        fields["hr_option"] = _choice(raw["hr_option"], HIRES_OPTIONS, {}, f"{where}.hr_option")
    fields["low_vram"] = bool(raw.get("low_vram", raw.get("lowvram", False)))
    fields["image"], fields["mask"] = _image_and_mask(raw, open_image, where)
    try:
        return ControlUnit(**fields)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            problems.append((f"{where}.{field}" if field else where, e["msg"].removeprefix("Value error, ")))
        raise UnitError(problems) from None


def units_from_api(alwayson: dict[str, Any], open_image: Callable[[str, str], Image.Image]) -> list[ControlUnit]:
    """Every unit of the ControlNet entry (kept in order: the infotext numbers them as sent)."""
    _, args = controlnet_args(alwayson)
    units, problems = [], []
    for index, raw in enumerate(args):
        try:
            unit = unit_from_api(raw, index, open_image)
        except UnitError as err:
            problems += err.problems
            continue
        # A skipped unit keeps its place (disabled), so "ControlNet 1" means the client's second unit.
        units.append(unit or ControlUnit(enabled=False))
    if problems:
        raise UnitError(problems)
    while units and not units[-1].used:
        units.pop()
    return units
