"""A1111's Refiner accordion (1.6+): a second checkpoint takes over the last part of the schedule.

Enable, the refiner checkpoint (the same list as the main picker) and "Switch at", the fraction of the
schedule the base model runs. Off, or no checkpoint, is no refiner (backend/sdxl/refiner.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from backend.app_context import AppContext
from backend.sdxl.refiner import Refiner


def checkpoint_titles(ctx: AppContext) -> list[str]:
    """The usable checkpoints' titles, as the main checkpoint picker lists them."""
    return [e.title for e in ctx.manager.checkpoints() if e.error is None]


def current_title(ctx: AppContext, value: str | None) -> str | None:
    """`value`'s title now (loading a checkpoint adds its hash to the title); None when it is gone."""
    if not value:
        return None
    try:
        return ctx.manager.find(value).title
    except ValueError:
        return None


@dataclass
class RefinerWidgets:
    accordion: gr.Accordion
    enabled: gr.Checkbox
    checkpoint: gr.Dropdown
    switch_at: gr.Slider
    refresh: gr.Button
    titles: Callable[[], list[str]]  # the checkpoints listed now: what a pasted "Refiner: name" is matched to

    @property
    def inputs(self) -> list:
        return [self.enabled, self.checkpoint, self.switch_at]

    @staticmethod
    def request_fields(values: list) -> dict:
        enabled, checkpoint, switch_at = values
        if not enabled or not checkpoint:
            return {"refiner": Refiner()}
        refiner = Refiner(checkpoint=checkpoint, switch_at=float(switch_at))
        return {"refiner": refiner if refiner.enabled else Refiner()}


def build_refiner(ctx: AppContext, tab: str, checkpoint_dropdown: gr.Dropdown) -> RefinerWidgets:
    """`checkpoint_dropdown`: the main picker; loading a model changes the titles, so the list follows it."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner") as accordion:
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{tab}_enable_refiner")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=checkpoint_titles(ctx), value=None,
                                     elem_id=f"{tab}_refiner_checkpoint", scale=4, allow_custom_value=False,
                                     info="Takes over the last steps; an SDXL refiner for an SDXL model")
            refresh = gr.Button("\U0001f504", elem_id=f"{tab}_refiner_refresh", scale=0, min_width=48)
            switch_at = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at", scale=4,
                                  elem_id=f"{tab}_refiner_switch_at",
                                  info="The fraction of the steps the base model runs")

    def refreshed(current):
        # The value only when its title changed (or it is gone): an answer that comes after the user
        # picked a refiner must not put the old pick back.
        title = current_title(ctx, current)
        if title == current:
            return gr.update(choices=checkpoint_titles(ctx))
        return gr.update(choices=checkpoint_titles(ctx), value=title)

    def rescan(current):
        ctx.manager.refresh()
        return refreshed(current)

    refresh.click(rescan, inputs=checkpoint, outputs=checkpoint, queue=False)
    checkpoint_dropdown.change(lambda _, current: refreshed(current), inputs=[checkpoint_dropdown, checkpoint],
                               outputs=checkpoint, queue=False)
    return RefinerWidgets(accordion=accordion, enabled=enabled, checkpoint=checkpoint, switch_at=switch_at,
                          refresh=refresh, titles=lambda: checkpoint_titles(ctx))
