"""The Script dropdown (A1111's, at the bottom of txt2img / img2img) and extensions' accordions.

Both are built from the same `Arg` specs an extension registers; a script's values become the request's
`script_name` / `script_args`, an accordion's its `extension_args[ext id]`, as the API fills them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backend.app_context import AppContext
from backend.extensions.scripts import StudioChoices
from backend.extensions.specs import Arg, check_dependencies

NO_SCRIPT = "None"
log = logging.getLogger(__name__)


def arg_component(arg: Arg, studio: StudioChoices, elem_id: str, depends: Sequence[Any] = ()):
    """One Gradio input for an Arg, with its default; `depends`: the values of its `depends_on` args."""
    kind, label = arg.kind, arg.label
    visible = arg.visible_for(studio, *depends)
    if kind == "checkbox":
        return gr.Checkbox(label=label, value=bool(arg.default), elem_id=elem_id, visible=visible)
    if kind in ("dropdown", "multiselect"):
        choices = arg.choices_for(studio, *depends)
        multi = kind == "multiselect"
        value = arg.default if arg.default is not None else ([] if multi else (choices[0] if choices else None))
        if multi:
            value = list(value)
        return gr.Dropdown(label=label, choices=choices, value=value, multiselect=multi,
                           allow_custom_value=True,  # the script checks; an empty list must not fail
                           elem_id=elem_id, visible=visible)
    if kind == "slider":
        return gr.Slider(arg.minimum or 0, arg.maximum or 100, value=arg.default, step=arg.step or 1, label=label,
                         elem_id=elem_id, visible=visible)
    if kind == "number":
        return gr.Number(label=label, value=arg.default, elem_id=elem_id, visible=visible)
    return gr.Textbox(label=label, value="" if arg.default is None else str(arg.default),
                      lines=4 if kind == "textarea" else 1, elem_id=elem_id, visible=visible)


def followed(arg: Arg, studio: StudioChoices, values: Sequence[Any], current: Any):
    """The update of an Arg's input once an arg it depends on changed: its choices (keeping the chosen
    values still offered) and whether it shows."""
    visible = arg.visible_for(studio, *values)
    if arg.kind not in ("dropdown", "multiselect"):
        return gr.update(visible=visible)
    choices = arg.choices_for(studio, *values)
    if arg.kind == "multiselect":
        value = [v for v in (current or []) if v in choices]
    elif current in choices:
        value = current
    else:
        value = arg.default if arg.default in choices else (choices[0] if choices else None)
    return gr.update(choices=choices, value=value, visible=visible)


def build_args(args: Sequence[Arg], studio: StudioChoices, elem_prefix: str) -> list:
    """The inputs of one script (or accordion), in order; an arg with `depends_on` follows those args."""
    try:
        check_dependencies(args)
        dependent = True
    except ValueError as err:  # a broken extension's inputs still show, unlinked
        log.warning("%s: %s; its inputs do not follow each other", elem_prefix, err)
        dependent = False
    defaults = {a.name: a.default for a in args}
    components = [arg_component(arg, studio, f"{elem_prefix}_{arg.name}",
                                [defaults[n] for n in arg.depends_on] if dependent else ())
                  for arg in args]
    if not dependent:
        return components
    by_name = {a.name: c for a, c in zip(args, components)}
    for arg, component in zip(args, components):
        if not arg.depends_on:
            continue
        sources = [by_name[name] for name in arg.depends_on]

        def follow(*values, arg=arg):
            return followed(arg, studio, values[:-1], values[-1])

        # Its own value is read too, to keep the chosen values that the new list still has.
        gr.on([source.change for source in sources], follow, inputs=[*sources, component], outputs=component,
              queue=False, show_progress="hidden", api_visibility="private")
    return components


@dataclass
class ScriptWidgets:
    dropdown: gr.Dropdown
    groups: list  # one per script, shown while it is chosen
    arg_names: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, its args' names)
    components: list = field(default_factory=list)  # every script's inputs, script after script

    @property
    def inputs(self) -> list:
        return [self.dropdown, *self.components]

    @property
    def count(self) -> int:
        return len(self.inputs)

    def request_fields(self, values: list) -> dict:
        """script_name / script_args from the dropdown and the chosen script's inputs."""
        title, rest = values[0], list(values[1:])
        if not title or title == NO_SCRIPT:
            return {}
        for name, names in self.arg_names:
            taken, rest = rest[:len(names)], rest[len(names):]
            if name == title:
                return {"script_name": title, "script_args": dict(zip(names, taken))}
        return {"script_name": title}


def build_script_row(ctx: AppContext, kind: str) -> ScriptWidgets:
    scripts = ctx.service.scripts(kind)
    studio = StudioChoices(ctx.service)
    dropdown = gr.Dropdown(label="Script", choices=[NO_SCRIPT, *(s.title for s in scripts)], value=NO_SCRIPT,
                           elem_id=f"{kind}_script")
    widgets = ScriptWidgets(dropdown=dropdown, groups=[])
    for script in scripts:
        slug = "".join(c if c.isalnum() else "_" for c in script.title.lower())
        with gr.Group(visible=False, elem_id=f"{kind}_script_{slug}") as group:
            widgets.components += build_args(script.args, studio, f"{kind}_script_{slug}")
        widgets.groups.append(group)
        widgets.arg_names.append((script.title, [a.name for a in script.args]))
    titles = [s.title for s in scripts]
    dropdown.change(lambda chosen: [gr.update(visible=chosen == t) for t in titles], inputs=dropdown,
                    outputs=widgets.groups, queue=False)
    return widgets


@dataclass
class ExtensionControls:
    owners: list[tuple[str, list[str]]] = field(default_factory=list)  # (ext id, its args' names)
    inputs: list = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.inputs)

    def request_fields(self, values: list) -> dict:
        args, rest = {}, list(values)
        for ext_id, names in self.owners:
            taken, rest = rest[:len(names)], rest[len(names):]
            args[ext_id] = dict(zip(names, taken))
        return {"extension_args": args} if args else {}


def build_extension_accordions(ctx: AppContext, kind: str) -> ExtensionControls:
    """Each extension's accordion on this tab, in load order."""
    studio = StudioChoices(ctx.service)
    found = ExtensionControls()
    for ext_id, controls in ctx.service.hooks.controls:
        if kind not in controls.tabs:
            continue
        with gr.Accordion(controls.title, open=False, elem_id=f"{kind}_ext_{ext_id}"):
            found.inputs += build_args(controls.args, studio, f"{kind}_ext_{ext_id}")
        found.owners.append((ext_id, [a.name for a in controls.args]))
    return found
