"""Segment Anything in the browser: click points (or two box corners) on the picture,
see the mask at once, pick one of SAM's three candidates, grow / shrink and
feather it, and send picture and mask to img2img's Inpaint editor.

"Everything" runs SAM's automatic mask generator; clicks then pick segments.
The picture's embedding is kept by the library, so every click after the first
runs only SAM's small decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from backend.app_context import AppContext
from backend.extras.segment import blend_mask, feather_mask, grow_mask, pick_segment
from backend.images.loading import to_rgb
from ui.errors import user_message

POINT_MODES = ("Positive point", "Negative point", "Box corner", "Pick segment")
_DOT = 5


@dataclass
class SegmentPanel:
    source: gr.Image
    overlay: gr.Image
    mode: gr.Radio
    candidate: gr.Radio
    send_inpaint: gr.Button
    picture_and_mask: gr.State  # (RGB picture, "L" mask) of the last result, for "Send to inpaint"


@dataclass
class _Clicks:
    """What the user clicked on one picture: points with labels, box corners, picked segments."""
    points: list[tuple[float, float, int]]
    corners: list[tuple[float, float]]
    masks: list[np.ndarray]  # SAM's three candidates for the current prompt
    segments: list  # "Everything" results
    picked: list[int]


def _empty() -> _Clicks:
    return _Clicks(points=[], corners=[], masks=[], segments=[], picked=[])


def build_segment_panel(ctx: AppContext, prefix: str) -> SegmentPanel:
    sam = ctx.extras.segment
    with gr.Column(elem_id=f"{prefix}_sam_panel"):
        with gr.Row():
            model = gr.Dropdown(label="SAM model", choices=sam.model_names(),
                                value=(sam.model_names() or [None])[0], elem_id=f"{prefix}_sam_model")
            refresh = gr.Button("🔄", elem_id=f"{prefix}_sam_refresh", scale=0, min_width=48)
        source = gr.Image(label="Picture to segment", type="pil", sources=["upload", "clipboard"],
                          elem_id=f"{prefix}_sam_input", height=320)
        overlay = gr.Image(label="Click to add points", type="pil", interactive=False,
                           elem_id=f"{prefix}_sam_overlay", height=320)
        mode = gr.Radio(list(POINT_MODES), value=POINT_MODES[0], label="A click adds",
                        elem_id=f"{prefix}_sam_point_mode")
        with gr.Row():
            candidate = gr.Radio(["1", "2", "3"], value="1", label="Mask candidate", elem_id=f"{prefix}_sam_candidate")
            everything = gr.Button("Everything", elem_id=f"{prefix}_sam_everything", size="sm")
            clear = gr.Button("Clear points", elem_id=f"{prefix}_sam_clear", size="sm")
        with gr.Row():
            grow = gr.Slider(-64, 64, value=0, step=1, label="Grow (+) / shrink (-), pixels",
                             elem_id=f"{prefix}_sam_dilate")
            feather = gr.Slider(0, 32, value=0, step=1, label="Feather, pixels", elem_id=f"{prefix}_sam_feather")
        message = gr.Markdown(elem_id=f"{prefix}_sam_message")
        send_inpaint = gr.Button("Send to inpaint", elem_id=f"{prefix}_sam_send_inpaint", size="sm")
    clicks = gr.State(_empty())
    result = gr.State(None)

    def final_mask(picture: Image.Image, state: _Clicks, which: str, grow_px, feather_px) -> Image.Image | None:
        if state.picked:
            mask = np.zeros((picture.height, picture.width), dtype=bool)
            for index in state.picked:
                mask |= state.segments[index].mask
        elif state.masks:
            mask = state.masks[int(which) - 1]
        else:
            return None
        return feather_mask(grow_mask(mask, int(grow_px)), float(feather_px))

    def show(picture, state: _Clicks, which, grow_px, feather_px):
        """The overlay, the (picture, mask) for sending, and a message."""
        rgb = to_rgb(picture)
        mask = final_mask(rgb, state, which, grow_px, feather_px)
        shown = blend_mask(rgb, mask) if mask is not None else rgb.copy()
        draw = ImageDraw.Draw(shown)
        for x, y, label in state.points:
            draw.ellipse((x - _DOT, y - _DOT, x + _DOT, y + _DOT), fill=(0, 200, 0) if label else (220, 0, 0),
                         outline=(255, 255, 255))
        if len(state.corners) == 2:
            (x1, y1), (x2, y2) = state.corners
            draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=(255, 200, 0), width=2)
        for x, y in state.corners[:1] if len(state.corners) == 1 else []:
            draw.rectangle((x - _DOT, y - _DOT, x + _DOT, y + _DOT), outline=(255, 200, 0), width=2)
        return shown, (rgb, mask) if mask is not None else None

    def predict(model_name, picture, state: _Clicks):
        rgb = to_rgb(picture)
        positive = [(x, y) for x, y, label in state.points if label]
        negative = [(x, y) for x, y, label in state.points if not label]
        box = None
        if len(state.corners) == 2:
            (x1, y1), (x2, y2) = state.corners
            box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        if not positive and not negative and box is None:
            state.masks = []
            return state
        prediction = ctx.service.queue.on_device_now(
            lambda: sam.predict(model_name, rgb, positive=positive, negative=negative, box=box))
        state.masks = list(prediction.masks)
        return state

    def on_click(model_name, picture, state: _Clicks, point_mode, which, grow_px, feather_px, evt: gr.SelectData):
        if picture is None:
            return gr.skip(), state, gr.skip(), "Drop a picture first."
        x, y = (float(v) for v in evt.index)
        try:
            if point_mode == "Pick segment":
                if not state.segments:
                    return gr.skip(), state, gr.skip(), "Press **Everything** first, then click segments."
                index = pick_segment(state.segments, x, y)
                if index is not None:
                    state.picked = [i for i in state.picked if i != index] if index in state.picked \
                        else [*state.picked, index]
            else:
                state.picked = []
                if point_mode == "Box corner":
                    state.corners = [*state.corners[-1:], (x, y)] if len(state.corners) < 2 else [(x, y)]
                else:
                    state.points.append((x, y, int(point_mode == "Positive point")))
                state = predict(model_name, picture, state)
        except Exception as exc:  # a bad file or point: said, and the panel keeps working
            return gr.skip(), state, gr.skip(), f"⚠ {user_message(exc)}"
        shown, sent = show(picture, state, which, grow_px, feather_px)
        return shown, state, sent, ""

    def on_everything(model_name, picture, which, grow_px, feather_px):
        state = _empty()
        if picture is None:
            return gr.skip(), state, None, "Drop a picture first."
        try:
            state.segments = ctx.service.queue.on_device_now(lambda: sam.everything(model_name, to_rgb(picture)))
        except Exception as exc:
            return gr.skip(), state, None, f"⚠ {user_message(exc)}"
        shown, _ = show(picture, state, which, grow_px, feather_px)
        return (shown, state, None,
                f"{len(state.segments)} segments found: choose **Pick segment** and click the ones you want.")

    def on_new_picture(picture):
        return (to_rgb(picture) if picture is not None else None), _empty(), None, ""

    def on_adjust(picture, state: _Clicks, which, grow_px, feather_px):
        if picture is None:
            return gr.skip(), None
        return show(picture, state, which, grow_px, feather_px)

    click_inputs = [model, source, clicks, mode, candidate, grow, feather]
    overlay.select(on_click, inputs=click_inputs, outputs=[overlay, clicks, result, message])
    everything.click(on_everything, inputs=[model, source, candidate, grow, feather],
                     outputs=[overlay, clicks, result, message])
    source.change(on_new_picture, inputs=source, outputs=[overlay, clicks, result, message], queue=False)
    clear.click(on_new_picture, inputs=source, outputs=[overlay, clicks, result, message], queue=False)
    for control in (candidate, grow, feather):
        control.change(on_adjust, inputs=[source, clicks, candidate, grow, feather], outputs=[overlay, result])

    def rescan():
        sam.refresh()
        names = sam.model_names()
        return gr.update(choices=names, value=(names or [None])[0])

    refresh.click(rescan, outputs=model, queue=False)
    return SegmentPanel(source=source, overlay=overlay, mode=mode, candidate=candidate, send_inpaint=send_inpaint,
                        picture_and_mask=result)


def inpaint_editor_value(picture: Image.Image, mask: Image.Image) -> dict:
    """The Inpaint ImageEditor's value: the picture as background, the mask as one white painted layer."""
    layer = Image.new("RGBA", picture.size, (255, 255, 255, 0))
    layer.putalpha(mask)
    return {"background": picture.convert("RGBA"), "layers": [layer], "composite": picture.convert("RGBA")}


def send_segment_to_inpaint(picture_and_mask):
    """The Inpaint editor's new value, the img2img sub-tab to show, and the mode it puts the tab in."""
    if not picture_and_mask:
        raise gr.Error("Click the picture to make a mask first")
    picture, mask = picture_and_mask
    return inpaint_editor_value(picture, mask), gr.Tabs(selected="inpaint"), "inpaint"
