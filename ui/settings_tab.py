"""The Settings tab: one widget per option, generated from the Options model, saved atomically."""
from __future__ import annotations

import json
import typing

import gradio as gr

from backend.a1111_options import HTML_OPTIONS
from backend.app_context import AppContext
from backend.generation.samplers import SAMPLER_NAMES
from backend.settings import Options, OptionsStore
from ui.errors import user_message

# Options chosen elsewhere in the UI (the checkpoint picker on top).
HIDDEN = {"sd_model_checkpoint"}


def _widget(name: str, field, value, sampler_names=SAMPLER_NAMES):
    label = name.replace("_", " ")
    info = field.description
    annotation = field.annotation
    if name == "default_sampler":
        return gr.Dropdown(label=label, info=info, choices=list(sampler_names), value=value)
    if typing.get_origin(annotation) is typing.Literal:
        return gr.Dropdown(label=label, info=info, choices=list(typing.get_args(annotation)), value=value)
    if annotation is bool:
        return gr.Checkbox(label=label, info=info, value=value)
    if annotation in (int, float):
        return gr.Number(label=label, info=info, value=value, precision=0 if annotation is int else None)
    return gr.Textbox(label=label, info=info, value=value)


KEPT_COLUMNS = ["option", "value", "A1111 default"]


def kept_option_rows(store: OptionsStore, acted_on: frozenset[str] | set[str] = frozenset()) -> list[list[str]]:
    """The A1111 options the studio keeps (config.json, POST /sdapi/v1/options) but does not act on, one row
    each, values as JSON; changed ones first, so what a client set is not lost among ~300 defaults.
    `acted_on`: extra keys that are settings of extensions (they have sections of their own)."""
    defaults = store.extra_defaults
    rows = [[key, json.dumps(value, ensure_ascii=False), json.dumps(defaults[key], ensure_ascii=False)]
            for key, value in store.extra_options.items() if key not in HTML_OPTIONS and key not in acted_on]
    return sorted(rows, key=lambda row: row[1] == row[2])


def build_settings_tab(ctx: AppContext) -> None:
    current = ctx.options.options
    names = [n for n in Options.model_fields if n not in HIDDEN]
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reload = gr.Button("Reload from config.json", elem_id="settings_reload")
    result = gr.Markdown(elem_id="settings_result")
    parts = ctx.device.describe()  # chosen at start by --precision and the hardware
    gr.Markdown(f"Running on **{parts['device']}**: UNet {parts['unet']}, text encoders {parts['text encoders']}, "
                f"VAE {parts['vae']}, {parts['layout']}, UNet compile {parts['unet compile']} ({parts['why']}).",
                elem_id="settings_precision")
    samplers = ctx.service.samplers.names()
    widgets = [_widget(n, Options.model_fields[n], getattr(current, n), samplers) for n in names]
    own = build_extension_settings(ctx)
    with gr.Accordion("A1111 options kept but not acted on", open=False, elem_id="settings_a1111_kept") as kept_box:
        gr.Markdown("A1111 clients read and set these through `/sdapi/v1/options`; the studio stores them in "
                    "config.json and answers them back, but nothing here uses them.")
        kept = gr.Dataframe(value=kept_option_rows(ctx.options, own), headers=KEPT_COLUMNS, interactive=False,
                            wrap=True, elem_id="settings_a1111_kept_table")

    def save(*values):
        opts = ctx.options.options
        changes = {n: v for n, v in zip(names, values) if v != getattr(opts, n)}
        for n, v in list(changes.items()):
            if Options.model_fields[n].annotation is int and isinstance(v, float):
                changes[n] = int(v)
        if not changes:
            return "Nothing changed."
        try:
            ctx.options.update(**changes)
        except Exception as exc:
            return f"Not saved: {user_message(exc)}"
        return f"Saved {len(changes)} setting(s): {', '.join(sorted(changes))}."

    def load():
        opts = ctx.options.load()
        return [getattr(opts, n) for n in names] + [kept_option_rows(ctx.options, own)]

    apply.click(save, inputs=widgets, outputs=result)
    reload.click(load, outputs=[*widgets, kept])
    kept_box.expand(lambda: kept_option_rows(ctx.options, own), outputs=kept)  # API clients may have set some since


def _setting_widget(setting, value):
    label = setting.label or setting.key
    if setting.kind == "checkbox":
        return gr.Checkbox(label=label, value=bool(value))
    if setting.kind in ("dropdown", "multiselect"):
        return gr.Dropdown(label=label, choices=list(setting.choices), value=value,
                           multiselect=setting.kind == "multiselect")
    if setting.kind in ("number", "slider"):
        return gr.Number(label=label, value=value)
    return gr.Textbox(label=label, value="" if value is None else str(value), lines=4 if setting.kind == "textarea" else 1)


def build_extension_settings(ctx: AppContext) -> set[str]:
    """A section per extension with settings, each saved on its own; returns the keys shown."""
    by_extension: dict[str, list] = {}
    for ext_id, setting in ctx.service.hooks.settings:
        by_extension.setdefault(ext_id, []).append(setting)
    values = ctx.options.extra_options
    for ext_id, settings in by_extension.items():
        with gr.Accordion(f"Extension: {ext_id}", open=False, elem_id=f"settings_ext_{ext_id}"):
            inputs = [_setting_widget(s, values.get(s.key, s.default)) for s in settings]
            apply = gr.Button("Apply", elem_id=f"settings_ext_{ext_id}_apply")
            said = gr.Markdown()

            def save(*new, settings=settings):
                changes = {s.key: _typed(v, s.default) for s, v in zip(settings, new)}
                try:
                    ctx.options.update_extra(changes)
                except Exception as exc:
                    return f"Not saved: {user_message(exc)}"
                return f"Saved {len(changes)} setting(s)."

            apply.click(save, inputs=inputs, outputs=said)
    return {s.key for _, s in ctx.service.hooks.settings}


def _typed(value, default):
    """A Number widget answers floats: an int setting stays an int."""
    if isinstance(default, bool) or not isinstance(default, int) or not isinstance(value, float):
        return value
    return int(value)
