"""The PNG Info tab: drop an image, read its generation parameters (ours or A1111's)."""
from __future__ import annotations

import html

import gradio as gr

from backend.images.infotext import parse_infotext, read_infotext


def build_png_info_tab() -> None:
    with gr.Row():
        image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, elem_id="pnginfo_parameters")
            fields = gr.HTML(elem_id="pnginfo_fields")

    def read(img):
        if img is None:
            return "", ""
        raw = read_infotext(img)
        if not raw:
            return "", "<p>This image has no generation parameters.</p>"
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in parse_infotext(raw).items())
        return raw, f"<table>{rows}</table>"

    image.change(read, inputs=image, outputs=[text, fields])
