"""SDXL's size widgets: a dropdown of the sizes SDXL was trained at (it sets width and height) and an
accordion for the micro-conditioning (original size, crop, target size, and the negative ones). Both
show only while an SDXL checkpoint is selected; 0 means "the picture's size" (A1111's behaviour)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.app_context import AppContext
from backend.sdxl.size_conditioning import SDXL_BUCKETS, SizeConditioning, bucket_label

_FIELDS = [  # (SizeConditioning field, label)
    ("original_width", "Original width"), ("original_height", "Original height"),
    ("crop_left", "Crop left"), ("crop_top", "Crop top"),
    ("target_width", "Target width"), ("target_height", "Target height"),
    ("negative_original_width", "Negative original width"), ("negative_original_height", "Negative original height"),
    ("negative_target_width", "Negative target width"), ("negative_target_height", "Negative target height"),
]


def is_sdxl_checkpoint(ctx: AppContext, title: str | None) -> bool:
    try:
        info = ctx.manager.find(title) if title else ctx.manager.default_checkpoint()
    except Exception:  # an unknown title: the generate button will say so
        return False
    return bool(info is not None and info.variant is not None and info.variant.family.is_sdxl)


@dataclass
class SdxlSizeWidgets:
    bucket: gr.Dropdown
    accordion: gr.Accordion
    numbers: list[gr.Number]

    @property
    def inputs(self) -> list[gr.Number]:
        return list(self.numbers)

    @property
    def fields(self) -> list[str]:
        return [name for name, _ in _FIELDS]

    @staticmethod
    def request_fields(values: list) -> dict:
        conditioning = {name: int(value or 0) for (name, _), value in zip(_FIELDS, values)}
        return {"sdxl_conditioning": SizeConditioning(**conditioning)}


def build_sdxl_size(ctx: AppContext, tab: str, checkpoint: gr.Dropdown, width: gr.Slider,
                    height: gr.Slider) -> SdxlSizeWidgets:
    shown = is_sdxl_checkpoint(ctx, checkpoint.value)
    bucket = gr.Dropdown(label="SDXL size", choices=["custom", *(bucket_label(w, h) for w, h in SDXL_BUCKETS)],
                         value="custom", visible=shown, elem_id=f"{tab}_sdxl_bucket",
                         info="The sizes SDXL was trained at; sets width and height")
    with gr.Accordion("SDXL size conditioning", open=False, visible=shown, elem_id=f"{tab}_sdxl_size") as accordion:
        gr.Markdown("What the model is told about the picture's size and crop. 0 = the picture's size "
                    "(negative: as the positive).")
        numbers = []
        for start in range(0, len(_FIELDS), 2):
            with gr.Row():
                for name, label in _FIELDS[start:start + 2]:
                    numbers.append(gr.Number(label=label, value=0, minimum=0, precision=0,
                                             elem_id=f"{tab}_sdxl_{name}"))

    def pick(label: str):
        if label == "custom" or "x" not in label:
            return gr.update(), gr.update()
        w, h = (int(v) for v in label.split("x"))
        return w, h

    bucket.change(pick, inputs=bucket, outputs=[width, height], queue=False)
    checkpoint.change(lambda title: [gr.update(visible=is_sdxl_checkpoint(ctx, title))] * 2, inputs=checkpoint,
                      outputs=[bucket, accordion], queue=False)
    return SdxlSizeWidgets(bucket=bucket, accordion=accordion, numbers=numbers)
