"""ControlNet units in the infotext, written and read the way sd-webui-controlnet does.

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1,
    Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200,
    Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"

(one line in the file; the value is JSON-quoted by the infotext writer because it
holds commas and colons). Reading gives the unit's settings, not its image.
"""
from __future__ import annotations

import re

from backend.control.units import CONTROL_MODES, HIRES_OPTIONS, UNIT_RESIZE_MODES, ControlUnit

_UNIT_KEY = re.compile(r"^ControlNet (\d+)$")
_PAIR = re.compile(r"\s*([A-Za-z][A-Za-z ]*?):\s*([^,]*)(?:,|$)")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def unit_infotext(unit: ControlUnit, model_title: str, processor_res: int | None = None) -> str:
    res = processor_res if processor_res is not None else unit.processor_res
    return ", ".join([
        f"Module: {unit.module}", f"Model: {model_title}", f"Weight: {_number(unit.weight)}",
        f"Resize Mode: {unit.resize_mode}", f"Processor Res: {res}",
        f"Threshold A: {_number(unit.threshold_a)}", f"Threshold B: {_number(unit.threshold_b)}",
        f"Guidance Start: {_number(unit.guidance_start)}", f"Guidance End: {_number(unit.guidance_end)}",
        f"Pixel Perfect: {unit.pixel_perfect}", f"Control Mode: {unit.control_mode}",
    ] + ([f"Hr Option: {unit.hr_option}"] if unit.hr_option != "Both" else []))


def _fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in _PAIR.findall(text)}


def units_from_infotext(params: dict[str, str]) -> dict[int, ControlUnit]:
    """Unit number -> settings, from parsed infotext (backend.images.infotext.parse_infotext)."""
    units: dict[int, ControlUnit] = {}
    for key, value in params.items():
        match = _UNIT_KEY.match(key)
        if not match:
            continue
        fields = _fields(value)
        values: dict = {"module": fields.get("Module", "none"), "model": fields.get("Model", "None")}
        for name, field, kind in (("Weight", "weight", float), ("Processor Res", "processor_res", int),
                                  ("Threshold A", "threshold_a", float), ("Threshold B", "threshold_b", float),
                                  ("Guidance Start", "guidance_start", float),
                                  ("Guidance End", "guidance_end", float)):
            try:
                values[field] = kind(float(fields[name])) if kind is int else kind(fields[name])
            except (KeyError, ValueError):
                pass
        if fields.get("Resize Mode") in UNIT_RESIZE_MODES:
            values["resize_mode"] = fields["Resize Mode"]
        if fields.get("Control Mode") in CONTROL_MODES:
            values["control_mode"] = fields["Control Mode"]
        values["pixel_perfect"] = fields.get("Pixel Perfect") == "True"
        if fields.get("Hr Option") in HIRES_OPTIONS:
            values["hr_option"] = fields["Hr Option"]
        try:
            units[int(match.group(1))] = ControlUnit(**values)
        except ValueError:
            continue  # a unit this studio cannot hold (e.g. weight out of range): left out
    return units
