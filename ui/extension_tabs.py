"""Tabs that extensions add (`api.add_tab`), after the studio's own; a tab whose build fails says why."""
from __future__ import annotations

import logging

import gradio as gr

from backend.app_context import AppContext

log = logging.getLogger(__name__)


def build_extension_tabs(ctx: AppContext) -> None:
    for ext_id, tab in ctx.service.hooks.tabs:
        with gr.Tab(tab.title, elem_id=f"tab_ext_{ext_id}"):
            try:
                tab.build()
            except Exception as exc:  # noqa: BLE001 - one broken extension must not stop the page
                log.exception("extension %s: its tab %r failed to build", ext_id, tab.title)
                gr.Markdown(f"This tab of extension `{ext_id}` failed to build: {type(exc).__name__}: {exc}")
