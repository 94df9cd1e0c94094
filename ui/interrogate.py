"""img2img's "Interrogate CLIP" button: a caption of the picture in use, written into the prompt box."""
from __future__ import annotations

import gradio as gr
from PIL import Image

from backend.app_context import AppContext
from ui.errors import user_message


def build_interrogate_button(tab: str) -> gr.Button:
    return gr.Button("Interrogate CLIP", elem_id=f"{tab}_interrogate", size="sm")


def caption_for(ctx: AppContext, picture: Image.Image | None, prompt: str) -> str:
    """The caption of `picture`; without a picture or a model, a warning says why and the prompt stays."""
    if picture is None:
        gr.Warning("Interrogate: put a picture in first")
        return prompt
    if ctx.interrogate is None:
        gr.Warning("Interrogate is not available in this studio")
        return prompt
    try:
        return ctx.interrogate.interrogate(picture, "clip")
    except Exception as exc:  # noqa: BLE001 - shown to the user; the prompt is kept
        gr.Warning(f"Interrogate: {user_message(exc)}")
        return prompt
