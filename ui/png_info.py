"""The PNG Info tab: drop an image, read its generation parameters (ours or A1111's)."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from backend.images.infotext import parse_infotext, parse_params_line, read_infotext


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
        extras = img.info.get("extras") if isinstance(img.info.get("extras"), str) else ""
        if not raw and not extras:
            return "", "<p>This image has no generation parameters.</p>"
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in parse_infotext(raw).items()) if raw else ""
        # The Extras tab's steps (A1111's "extras" chunk): shown after the generation parameters.
        extra_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                             for k, v in parse_params_line(extras).items()) if extras else ""
        text = raw or ""
        if extras:
            text = f"{text}\n\nextras: {extras}".strip()
        return text, f"<table>{rows}{extra_rows}</table>"

    image.change(read, inputs=image, outputs=[text, fields])
    return PngInfoTab(image=image, text=text, send_txt2img=send_txt2img, send_img2img=send_img2img,
                      send_inpaint=send_inpaint)
