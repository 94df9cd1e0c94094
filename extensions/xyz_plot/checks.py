"""Checking an axis's values before any picture is made, so a typo fails at once with its name rather
than after half the grid: choices against the studio's lists, Prompt S/R and order against the prompt."""
from __future__ import annotations

from pathlib import PurePath

from .axes import Axis

_SHOWN = 30  # choices listed in an error at most


def _keys(title: str) -> set[str]:
    """The names a checkpoint title "sub/name.safetensors [hash]" answers to, as A1111 matches them."""
    name = title.split(" [")[0]
    base = PurePath(name).name
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return {title.lower(), name.lower(), base.lower(), stem.lower(), name.rsplit(".", 1)[0].lower()}


def _unknown(letter: str, axis: Axis, value: str, listed: list[str]) -> ValueError:
    shown = ", ".join(listed[:_SHOWN]) + (", ..." if len(listed) > _SHOWN else "")
    return ValueError(f"{letter} values: {value!r} is not one of the {axis.choices} ({axis.label}); "
                      f"there are: {shown or 'none'}")


def _match(value: str, listed: list[str], checkpoints: bool) -> str | None:
    wanted = value.strip().lower()
    for entry in listed:
        if entry.lower() == wanted:
            return entry
    if checkpoints:
        return next((entry for entry in listed if wanted in _keys(entry)), None)
    return None


def resolve_choices(axis: Axis, values: list, run, letter: str) -> list:
    """Each value as the studio's list spells it; an unknown one is a ValueError naming it."""
    if axis.choices is None:
        return values
    listed = [str(entry) for entry in run.choices(axis.choices)]
    resolved = []
    for value in values:
        if axis.choices == "styles":  # one value may apply several styles: "a, b"
            pieces = [p.strip() for p in str(value).split(",") if p.strip()]
            found = [_match(p, listed, False) for p in pieces]
            missing = next((p for p, f in zip(pieces, found) if f is None), None)
            if missing is not None:
                raise _unknown(letter, axis, missing, listed)
            resolved.append(", ".join(found))
            continue
        wanted = "Automatic" if axis.choices == "vaes" and value.strip().lower() == "auto" else value
        found = _match(wanted, listed, axis.choices == "checkpoints")
        if found is None:
            raise _unknown(letter, axis, value, listed)
        resolved.append(found)
    return resolved


def check_prompt_axis(axis: Axis, values: list, request, letter: str) -> None:
    """Prompt S/R's first value must be in the prompt (or the negative one); Prompt order's tokens too."""
    if axis.label == "Prompt S/R":
        if not values or not values[0]:
            raise ValueError(f"{letter} values: Prompt S/R needs the text to search for as its first value")
        if values[0] not in request.prompt and values[0] not in request.negative_prompt:
            raise ValueError(f"{letter} values: Prompt S/R did not find {values[0]!r} in the prompt or the "
                             "negative prompt")
    elif axis.label == "Prompt order" and values:
        missing = [token for token in values[0] if token not in request.prompt]
        if missing:
            raise ValueError(f"{letter} values: Prompt order did not find {missing[0]!r} in the prompt")
