"""The PNG Info tab: drop an image, read its generation parameters (ours or A1111's)."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from backend.images.infotext import parse_infotext, read_infotext


@dataclass
class PngInfoTab:
    image: gr.Image
    text: gr.Textbox
    send_txt2img: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button


def build_png_info_tab() -> PngInfoTab:
    with gr.Row():
        # image_mode None and PNG: the picture reaches us with its metadata as stored.
        image = gr.Image(label="Source", type="pil", image_mode=None, format="png",
                         sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, elem_id="pnginfo_parameters")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img", size="sm")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img", size="sm")
                send_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint", size="sm")
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
    return PngInfoTab(image=image, text=text, send_txt2img=send_txt2img, send_img2img=send_img2img,
                      send_inpaint=send_inpaint)
