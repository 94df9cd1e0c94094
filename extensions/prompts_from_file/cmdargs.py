"""A line of "Prompts from file or textbox" that starts with `--`: A1111's `cmdargs` options, parsed.

    --prompt "a cat" --negative_prompt "blurry" --steps 20 --seed 5 --sampler_name "DPM++ 2M"

As in A1111 1.10 the line is split with shlex, `--prompt` and `--negative_prompt` take every word up to
the next `--option`, and every other option takes one value of its type. Unlike A1111 a line it cannot
read is refused (a ValueError naming the line and the option) instead of being used as a prompt, so a
typo never silently becomes the picture's prompt. Standard library only: the tests import it directly.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _styles(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


# A1111 1.10's tags and their types; each is turned into our request's fields by `request_changes`.
TAGS: dict[str, Callable[[str], object]] = {
    "sd_model": str,
    "outpath_samples": str,
    "outpath_grids": str,
    "prompt_for_display": str,
    "prompt": str,
    "negative_prompt": str,
    "styles": _styles,
    "seed": int,
    "subseed_strength": float,
    "subseed": int,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_index": int,
    "sampler_name": str,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "restore_faces": _bool,
    "tiling": _bool,
    "do_not_save_samples": _bool,
    "do_not_save_grid": _bool,
}
# Read, then left out (with a warning): a line of text must not choose where files are written.
IGNORED = ("outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_grid")
_SAME_NAME = ("prompt", "negative_prompt", "styles", "seed", "subseed_strength", "subseed", "batch_size",
              "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling")


def cmdargs(line: str, where: str = "line") -> dict[str, object]:
    """{tag: typed value} of one line; `where` names the line in errors ("line 3")."""
    try:
        words = shlex.split(line)
    except ValueError as err:  # an unclosed quote
        raise ValueError(f"{where} ({line!r}): {err}") from None
    found: dict[str, object] = {}
    pos = 0
    while pos < len(words):
        option = words[pos]
        if not option.startswith("--"):
            raise ValueError(f"{where} ({line!r}): {option!r} is not an option (options start with --)")
        tag = option[2:]
        if tag not in TAGS:
            raise ValueError(f"{where} ({line!r}): unknown option {option}; the options are: "
                             + ", ".join(f"--{t}" for t in TAGS))
        if pos + 1 >= len(words):
            raise ValueError(f"{where} ({line!r}): option {option} has no value")
        if tag in ("prompt", "negative_prompt"):  # every word up to the next option, as A1111
            end = pos + 1
            while end + 1 < len(words) and not words[end + 1].startswith("--"):
                end += 1
            found[tag] = " ".join(words[pos + 1:end + 1])
            pos = end + 1
            continue
        try:
            found[tag] = TAGS[tag](words[pos + 1])
        except ValueError as err:
            raise ValueError(f"{where} ({line!r}): option {option}: {err}") from None
        pos += 2
    return found


def read_line(line: str, where: str = "line") -> dict[str, object]:
    """A line starting with `--` as options, any other line as the prompt."""
    return cmdargs(line, where) if line.startswith("--") else {"prompt": line}


def request_changes(tags: dict[str, object], samplers: list[str], where: str = "line") -> tuple[dict, list[str]]:
    """(our request fields, warnings) for one line's tags; `samplers` is the studio's sampler list."""
    changes = {k: v for k, v in tags.items() if k in _SAME_NAME}
    warnings = [f"{where}: --{t} is not used here (the studio's settings decide)" for t in IGNORED if t in tags]
    for side in ("seed_resize_from_h", "seed_resize_from_w"):
        if side in tags:
            changes[side] = max(int(tags[side]), 0)  # A1111's -1 (off) is our 0
    if "sd_model" in tags:
        changes["checkpoint"] = tags["sd_model"]
    if "do_not_save_samples" in tags:
        changes["save_images"] = not tags["do_not_save_samples"]
    if "sampler_index" in tags:
        index = int(tags["sampler_index"])
        if not 0 <= index < len(samplers):
            raise ValueError(f"{where}: --sampler_index {index} is not one of the {len(samplers)} samplers")
        changes["sampler_name"] = samplers[index]
    if "sampler_name" in tags:  # matched without regard to case, as A1111's samplers_map
        wanted = str(tags["sampler_name"]).strip().lower()
        name = next((s for s in samplers if s.lower() == wanted), None)
        if name is None:
            raise ValueError(f"{where}: unknown sampler {tags['sampler_name']!r}; choose one of: {', '.join(samplers)}")
        changes["sampler_name"] = name
    return changes, warnings
