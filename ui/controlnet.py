"""The ControlNet accordion (N unit tabs) and the "Image prompt" (IP-Adapter) accordion of txt2img and img2img.

Thin, like the other tabs: the widgets' values become `ControlUnit`s, the same
type the API's `alwayson_scripts.ControlNet` becomes, and the request carries
them. The 💥 button runs the unit's preprocessor and shows the map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from backend.app_context import AppContext
from backend.control.units import (CONTROL_MODES, HIRES_OPTIONS, UNIT_RESIZE_MODES, ControlUnit,
                                   pixel_perfect_resolution)
from backend.images.loading import to_rgb
from ui.errors import user_message

VALUES_PER_UNIT = 14
IP_ADAPTER_MODULE = "ip-adapter"


@dataclass
class UnitWidgets:
    enabled: gr.Checkbox
    image: gr.ImageEditor
    module: gr.Dropdown
    model: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    pixel_perfect: gr.Checkbox
    processor_res: gr.Slider
    threshold_a: gr.Slider
    threshold_b: gr.Slider
    hr_option: gr.Radio
    preview: gr.Image

    @property
    def inputs(self) -> list:
        return [self.enabled, self.image, self.module, self.model, self.weight, self.start, self.end,
                self.control_mode, self.resize_mode, self.pixel_perfect, self.processor_res, self.threshold_a,
                self.threshold_b, self.hr_option]


@dataclass
class ControlWidgets:
    units: list[UnitWidgets] = field(default_factory=list)
    ip_inputs: list = field(default_factory=list)  # enabled, adapter, gallery, weight, start, end

    @property
    def inputs(self) -> list:
        return [c for unit in self.units for c in unit.inputs] + self.ip_inputs

    def units_from(self, values: list) -> list[ControlUnit]:
        """The request's units from this accordion's values (in `inputs` order)."""
        units = []
        for k in range(len(self.units)):
            units.append(_unit(values[k * VALUES_PER_UNIT:(k + 1) * VALUES_PER_UNIT]))
        ip = _image_prompt(values[len(self.units) * VALUES_PER_UNIT:])
        if ip is not None:
            units.append(ip)
        return units


def editor_image(value) -> Image.Image | None:
    """What the unit shows: the upload with anything drawn on it, flattened on white; None when empty."""
    if not value:
        return None
    if isinstance(value, Image.Image):
        return to_rgb(value)
    picture = value.get("composite") or value.get("background")
    return to_rgb(picture) if picture is not None else None


def _unit(values: list) -> ControlUnit:
    (enabled, image, module, model, weight, start, end, mode, resize, perfect, res, a, b, hr_option) = values
    return ControlUnit(enabled=bool(enabled), image=editor_image(image) if enabled else None,
                       module=module or "none", model=model or "None", weight=float(weight),
                       guidance_start=float(start), guidance_end=float(end), control_mode=mode,
                       resize_mode=resize, pixel_perfect=bool(perfect), processor_res=int(res),
                       threshold_a=float(a), threshold_b=float(b), hr_option=hr_option)


def _image_prompt(values: list) -> ControlUnit | None:
    if len(values) < 6:
        return None
    enabled, adapter, gallery, weight, start, end = values[:6]
    if not enabled:
        return None
    pictures = [to_rgb(item[0] if isinstance(item, (tuple, list)) else item) for item in gallery or []]
    if not pictures:
        raise ValueError("Image prompt is on: add a reference image (or turn it off)")
    return ControlUnit(module=IP_ADAPTER_MODULE, model=adapter or "None", image=pictures[0],
                       more_images=pictures[1:], weight=float(weight), guidance_start=float(start),
                       guidance_end=float(end))


def _family_of(ctx: AppContext, checkpoint_title: str | None):
    try:
        info = ctx.manager.find(checkpoint_title) if checkpoint_title else ctx.manager.default_checkpoint()
    except ValueError:
        return None
    return info.variant.family if info and info.variant else None


def model_choices(ctx: AppContext, checkpoint_title: str | None) -> list[str]:
    """"None" and the ControlNets / IP-Adapters made for the checkpoint's family."""
    return ["None"] + ctx.control.model_titles(_family_of(ctx, checkpoint_title))


def _slider_update(slider, fallback_label: str):
    if slider is None:
        return gr.update(visible=False, label=fallback_label)
    return gr.update(visible=True, label=slider.label, minimum=slider.minimum, maximum=slider.maximum,
                     value=slider.value, step=slider.step)


def build_control_accordions(ctx: AppContext, tab: str, checkpoint: gr.Dropdown, width: gr.Slider,
                             height: gr.Slider) -> ControlWidgets:
    widgets = ControlWidgets()
    specs = ctx.control.preprocessors.specs()
    modules = [s.name for s in specs]
    with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet"):
        with gr.Tabs():
            for k in range(ctx.options.options.control_net_unit_count):
                with gr.Tab(f"ControlNet Unit {k}", elem_id=f"{tab}_controlnet_unit_{k}"):
                    widgets.units.append(_build_unit(ctx, f"{tab}_controlnet_{k}", modules, checkpoint, width,
                                                     height, hires=tab == "txt2img"))
    with gr.Accordion("Image prompt (IP-Adapter)", open=False, elem_id=f"{tab}_image_prompt"):
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{tab}_ip_enabled")
        with gr.Row():
            adapter = gr.Dropdown(label="IP-Adapter", choices=_ip_choices(ctx, None), value="None",
                                  elem_id=f"{tab}_ip_model", scale=4)
            refresh = gr.Button("\U0001f504", size="sm", min_width=40, scale=0, elem_id=f"{tab}_ip_refresh")
        gallery = gr.Gallery(label="Reference images (several are averaged)", type="pil", interactive=True,
                             columns=4, height=160, elem_id=f"{tab}_ip_images")
        with gr.Row():
            weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Weight", elem_id=f"{tab}_ip_weight")
            start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting step", elem_id=f"{tab}_ip_start")
            end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending step", elem_id=f"{tab}_ip_end")
        refresh.click(lambda title: (ctx.control.refresh(), gr.update(choices=_ip_choices(ctx, title)))[1],
                      inputs=checkpoint, outputs=adapter, queue=False)
        widgets.ip_inputs = [enabled, adapter, gallery, weight, start, end]
    return widgets


def _ip_choices(ctx: AppContext, checkpoint_title: str | None) -> list[str]:
    family = _family_of(ctx, checkpoint_title)
    return ["None"] + [i.title for i in ctx.control.ip_adapters.files()
                       if not i.error and (family is None or i.family in (None, family))]


def _build_unit(ctx: AppContext, prefix: str, modules: list[str], checkpoint: gr.Dropdown, width: gr.Slider,
                height: gr.Slider, hires: bool) -> UnitWidgets:
    with gr.Row():
        image = gr.ImageEditor(label="Control image (upload, or draw on a blank canvas)", type="pil",
                               image_mode="RGBA", format="png", sources=["upload", "clipboard"], transforms=[],
                               brush=gr.Brush(colors=["#000000", "#ffffff"], default_color="#000000",
                                              default_size=6),
                               elem_id=f"{prefix}_image", height=300)
        preview = gr.Image(label="Preprocessor preview", type="pil", interactive=False,
                           elem_id=f"{prefix}_preview", height=300)
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{prefix}_pixel_perfect")
        blank = gr.Button("\U0001f4dd Blank canvas", size="sm", elem_id=f"{prefix}_blank")
    with gr.Row():
        module = gr.Dropdown(label="Preprocessor (none: the image is the map)", choices=modules, value="none",
                             elem_id=f"{prefix}_module", scale=3, allow_custom_value=True)
        detect = gr.Button("\U0001f4a5", size="sm", min_width=40, scale=0, elem_id=f"{prefix}_detect")
        # Custom values: a pasted infotext may name a model this studio does not have (generating says so).
        model = gr.Dropdown(label="Model", choices=model_choices(ctx, None), value="None",
                            elem_id=f"{prefix}_model", scale=3, allow_custom_value=True)
        refresh = gr.Button("\U0001f504", size="sm", min_width=40, scale=0, elem_id=f"{prefix}_refresh")
    with gr.Row():
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{prefix}_weight")
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{prefix}_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{prefix}_end")
    with gr.Row():
        processor_res = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution", visible=False,
                                  elem_id=f"{prefix}_processor_res")
        threshold_a = gr.Slider(-1, 255, value=-1, step=1, label="Threshold A", visible=False,
                                elem_id=f"{prefix}_threshold_a")
        threshold_b = gr.Slider(-1, 255, value=-1, step=1, label="Threshold B", visible=False,
                                elem_id=f"{prefix}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value="Balanced", label="Control Mode",
                            elem_id=f"{prefix}_control_mode")
    resize_mode = gr.Radio(list(UNIT_RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                           elem_id=f"{prefix}_resize_mode")
    hr_option = gr.Radio(list(HIRES_OPTIONS), value="Both", label="Hires-Fix Option", visible=hires,
                         elem_id=f"{prefix}_hr_option")

    def on_module(name):
        spec = ctx.control.preprocessors.find(name)
        return (_slider_update(spec.resolution, "Preprocessor Resolution"),
                _slider_update(spec.threshold_a, "Threshold A"), _slider_update(spec.threshold_b, "Threshold B"))

    def run_detect(value, name, res, a, b, perfect, resize, w, h):
        picture = editor_image(value)
        if picture is None:
            raise gr.Error("upload a control image first")
        try:
            spec = ctx.control.preprocessors.find(name)
            if spec.resolution is None:
                resolution = None
            elif perfect:
                resolution = pixel_perfect_resolution(picture.size, (int(w), int(h)), resize)
            else:
                resolution = int(res)
            return ctx.service.queue.on_device_now(lambda: ctx.control.detect(
                name, picture, resolution, a if a >= 0 else None, b if b >= 0 else None))
        except Exception as exc:  # a missing annotator file, a refused file: say which
            raise gr.Error(user_message(exc)) from None

    def refresh_models(title, current):
        ctx.control.refresh()
        choices = model_choices(ctx, title)
        return gr.update(choices=choices, value=current if current in choices else "None")

    module.change(on_module, inputs=module, outputs=[processor_res, threshold_a, threshold_b], queue=False)
    detect.click(run_detect, inputs=[image, module, processor_res, threshold_a, threshold_b, pixel_perfect,
                                     resize_mode, width, height], outputs=preview)
    refresh.click(refresh_models, inputs=[checkpoint, model], outputs=model, queue=False)
    blank.click(lambda w, h: Image.new("RGB", (int(w), int(h)), "white"), inputs=[width, height], outputs=image,
                queue=False)
    return UnitWidgets(enabled=enabled, image=image, module=module, model=model, weight=weight, start=start,
                       end=end, control_mode=control_mode, resize_mode=resize_mode, pixel_perfect=pixel_perfect,
                       processor_res=processor_res, threshold_a=threshold_a, threshold_b=threshold_b,
                       hr_option=hr_option, preview=preview)
