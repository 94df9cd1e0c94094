"""The Extensions tab: what was found at start-up, whether it loaded, and why not.

Enabling, disabling, installing from a URL and updating come with the rest of
the Extensions work; for now a folder in extensions/ is found at start-up.
"""
from __future__ import annotations

import gradio as gr

from backend.app_context import AppContext
from backend.extensions import API_VERSION

COLUMNS = ["Extension", "Version", "Status", "Why not loaded", "Load time (s)", "Folder"]


def extension_rows(ctx: AppContext) -> list[list]:
    records = ctx.extensions.records if ctx.extensions else []
    return [[r.manifest.title if r.manifest else r.folder.name, r.manifest.version if r.manifest else "",
             r.status, r.error, round(r.seconds, 2), str(r.folder)] for r in records]


def build_extensions_tab(ctx: AppContext) -> gr.Dataframe:
    gr.Markdown(f"Extensions run with your own rights on this machine: install only code you trust. "
                f"Plugin API {API_VERSION}. A folder in `extensions/` is found when the studio starts.")
    return gr.Dataframe(value=extension_rows(ctx), headers=COLUMNS, interactive=False, elem_id="extensions_installed",
                        wrap=True)
