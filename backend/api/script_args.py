"""A1111's `script_name` / `script_args` and extension entries of `alwayson_scripts`, as request fields.

A1111 clients send a script's inputs as a list in the order of its UI; our scripts name their inputs
(`Arg.name`), so a list is matched to the names in order, and a dict is taken by name. An always-on
entry is found by the extension's id or its accordion's title, as A1111 finds scripts by title.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.extensions.specs import Arg


class ScriptArgsError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {why}" for f, why in problems))


def named_args(args: Sequence[Arg], given: Any, where: str, title: str) -> dict[str, Any]:
    """`given` (a list in A1111's order, or a dict by name) as {name: value}; missing ones get defaults."""
    names = [a.name for a in args]
    if given is None:
        given = []
    if isinstance(given, dict):
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ScriptArgsError([(f"{where}.{k}", f"{title} has no input {k!r}; it takes: {', '.join(names)}")
                                   for k in unknown])
        values = dict(given)
    elif isinstance(given, (list, tuple)):
        if len(given) > len(names):
            raise ScriptArgsError([(where, f"{title} takes {len(names)} inputs ({', '.join(names)}), "
                                           f"got {len(given)}")])
        values = dict(zip(names, given))
    else:
        raise ScriptArgsError([(where, "must be a list (in the script's order) or an object by name")])
    return {a.name: values.get(a.name, a.default) for a in args}


def script_fields(catalog, name: str | None, given: Any, kind: str) -> dict[str, Any]:
    """{"script_name", "script_args"} for a request, or {} without a script; unknown ones name themselves."""
    if not name or not str(name).strip():
        return {}
    try:
        script = catalog.find_script(str(name), kind)
    except ValueError as err:
        raise ScriptArgsError([("script_name", str(err))]) from None
    return {"script_name": script.title, "script_args": named_args(script.args, given, "script_args", script.title)}


def extension_fields(hooks, alwayson: dict[str, Any], handled: set[str]) -> dict[str, dict]:
    """`extension_args` from the alwayson_scripts entries that are extensions' accordions.

    `handled` names the entries already taken (ControlNet); every other one must match an extension."""
    found: dict[str, dict] = {}
    problems: list[tuple[str, str]] = []
    controls = list(getattr(hooks, "controls", []))
    for key, value in alwayson.items():
        if key.lower() in handled:
            continue
        match = next(((ext, c) for ext, c in controls if key.lower() in (ext.lower(), c.title.lower())), None)
        if match is None:
            known = ", ".join(c.title for _, c in controls) or "none"
            problems.append((f"alwayson_scripts.{key}", f"no always-on script named {key!r}; there are: "
                                                         f"ControlNet, {known}"))
            continue
        ext_id, spec = match
        given = value.get("args", []) if isinstance(value, dict) and "args" in value else value
        try:
            found[ext_id] = named_args(spec.args, given, f"alwayson_scripts.{key}.args", spec.title)
        except ScriptArgsError as err:
            problems += err.problems
    if problems:
        raise ScriptArgsError(problems)
    return found
