"""A1111 1.10's option keys and their defaults, as its /sdapi/v1/options lists them.

A1111 clients read keys such as `send_seed` or `eta_noise_seed_delta` and break
when one is missing, so the studio answers every one of them. The list (core
`modules/shared_options.py` plus the built-in extensions: Lora, SwinIR, LDSR,
canvas-zoom-and-pan, hypertile, extra-options-section) lives in
a1111_options.json beside this module; it is static data, read once.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

OPTIONS_FILE = Path(__file__).with_name("a1111_options.json")

# A1111's OptionHTML entries: explanations shown on its Settings page, never saved
# (A1111 ignores them in POST /options, and so does the studio).
HTML_OPTIONS: frozenset[str] = frozenset({
    "sd_vae_explanation", "profiling_explanation", "infotext_explanation", "hypertile_explanation",
    "settings_in_ui",
})


@cache
def _load() -> tuple[str, tuple[tuple[str, Any], ...]]:
    data = json.loads(OPTIONS_FILE.read_text(encoding="utf-8"))
    return data["version"], tuple(data["options"].items())


def a1111_version() -> str:
    return _load()[0]


def a1111_defaults() -> dict[str, Any]:
    """Every A1111 option key with A1111's default, in A1111's order; a fresh copy each call."""
    return json.loads(json.dumps(dict(_load()[1])))  # deep copy: list defaults must not be shared


def type_problem(value: Any, default: Any) -> str | None:
    """Why `value` cannot stand for an option whose A1111 default is `default` (its JSON type differs), or None.

    Loose on purpose: the studio does not act on these options, it only keeps them for clients.
    """
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, (int, float)):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    if isinstance(default, list):
        return None if isinstance(value, list) else "must be a list"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "must be an object"
    return None
