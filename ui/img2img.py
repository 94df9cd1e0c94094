"""The img2img tab with A1111's sub-modes: img2img, Sketch, Inpaint, Inpaint upload, Outpaint, Batch.

The sub-tab the user is on decides where the picture and the mask come from;
everything else is one Img2ImgRequest, the same type the API builds.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from backend.app_context import AppContext
from backend.generation.img2img_batch import run_folder_batch
from backend.generation.request import MASKED_CONTENT, Img2ImgRequest
from backend.generation.service import GenerationResult
from backend.images.loading import to_mask, to_rgb
from backend.images.resize import RESIZE_MODES, size_by_factor
from ui.controlnet import ControlWidgets, build_control_accordions
from ui.errors import user_message
from ui.extra_networks import build_extra_networks
from ui.interrogate import build_interrogate_button, caption_for
from ui.refiner import RefinerWidgets, build_refiner
from ui.scripts import build_extension_accordions, build_script_row
from ui.sdxl_size import SdxlSizeWidgets, build_sdxl_size
from ui.segment import SegmentPanel, build_segment_panel, send_segment_to_inpaint
from ui.session_jobs import SessionJobs
from ui.widgets import (
    PromptRow,
    ResultWidgets,
    SeedWidgets,
    build_batch_sliders,
    build_clip_skip,
    build_prompt_row,
    build_restore_faces,
    build_results,
    build_sampler_row,
    build_seed_row,
    build_tiling,
    stream_job,
    wire_job_buttons,
)

MODES = ("img2img", "sketch", "inpaint", "inpaint_upload", "outpaint", "batch")
SKETCH_COLOURS = ["#000000", "#ffffff", "#ff0000", "#00a000", "#0050ff", "#ffd000", "#ff00ff", "#00ffff"]


@dataclass
class Img2ImgTab:
    row: PromptRow
    results: ResultWidgets
    mode_tabs: gr.Tabs
    mode: gr.State
    init_image: gr.Image
    sketch: gr.ImageEditor
    inpaint: gr.ImageEditor
    upload_image: gr.Image
    upload_mask: gr.Image
    outpaint_image: gr.Image
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    denoise: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    clip_skip: gr.Slider
    resize_mode: gr.Radio
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    masked_content: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider
    restore_faces: gr.Checkbox
    segment: SegmentPanel
    control: ControlWidgets
    seeds: SeedWidgets
    tiling: gr.Checkbox
    sdxl: SdxlSizeWidgets
    refiner: RefinerWidgets


def _editor(elem_id: str, label: str, brush: gr.Brush) -> gr.ImageEditor:
    # PNG, not the default WebP: unmasked pixels must come back exactly as uploaded.
    return gr.ImageEditor(label=label, type="pil", image_mode="RGBA", format="png", brush=brush,
                          sources=["upload", "clipboard"], transforms=[], elem_id=elem_id, height=480)


def build_img2img_tab(ctx: AppContext, jobs: SessionJobs, checkpoint: gr.Dropdown,
                      allow_folders: bool = True) -> Img2ImgTab:
    row = build_prompt_row(ctx, "img2img")
    with gr.Row(elem_id="img2img_interrogate_row"):
        interrogate_button = build_interrogate_button("img2img")
    build_extra_networks(ctx, "img2img", row.prompt, checkpoint)
    mode = gr.State("img2img")
    with gr.Row():
        with gr.Column(scale=1, elem_id="img2img_settings"):
            with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
                with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab_img2img:
                    init_image = gr.Image(label="Image for img2img", type="pil", image_mode=None, format="png",
                                          sources=["upload", "clipboard"], elem_id="img2img_image", height=400)
                with gr.Tab("Sketch", id="sketch", elem_id="img2img_sketch_tab") as tab_sketch:
                    sketch = _editor("img2img_sketch", "Sketch",
                                     gr.Brush(colors=SKETCH_COLOURS, default_color="#000000", default_size=12))
                with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab_inpaint:
                    inpaint = _editor("img2img_inpaint", "Paint the area to change",
                                      gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24))
                with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab_upload:
                    upload_image = gr.Image(label="Image", type="pil", image_mode=None, format="png",
                                            sources=["upload", "clipboard"], elem_id="img_inpaint_base")
                    upload_mask = gr.Image(label="Mask (white = change, black = keep)", type="pil",
                                           image_mode=None, format="png", sources=["upload", "clipboard"],
                                           elem_id="img_inpaint_mask")
                with gr.Tab("Outpaint", id="outpaint", elem_id="img2img_outpaint_tab") as tab_outpaint:
                    outpaint_image = gr.Image(label="Image to extend", type="pil", image_mode=None, format="png",
                                              sources=["upload", "clipboard"], elem_id="img2img_outpaint_image")
                    with gr.Row():
                        pad_left = gr.Slider(0, 512, value=0, step=8, label="Left", elem_id="outpaint_left")
                        pad_right = gr.Slider(0, 512, value=128, step=8, label="Right", elem_id="outpaint_right")
                    with gr.Row():
                        pad_up = gr.Slider(0, 512, value=0, step=8, label="Up", elem_id="outpaint_up")
                        pad_down = gr.Slider(0, 512, value=0, step=8, label="Down", elem_id="outpaint_down")
                with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab", visible=allow_folders) as tab_batch:
                    gr.Markdown("Process every picture of a folder on this machine. Masks are matched by file name.")
                    batch_input = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                    batch_output = gr.Textbox(label="Output directory (empty: the usual img2img folder)",
                                              elem_id="img2img_batch_output_dir")
                    batch_masks = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                             elem_id="img2img_batch_inpaint_mask_dir")

            with gr.Accordion("Segment Anything", open=False, elem_id="img2img_sam_accordion"):
                segment = build_segment_panel(ctx, "img2img")
            resize_mode = gr.Radio(list(RESIZE_MODES), value="Just resize", label="Resize mode",
                                   elem_id="resize_mode")
            with gr.Accordion("Inpaint options", open=True, elem_id="img2img_inpaint_controls"):
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                mask_mode = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                     label="Mask mode", elem_id="img2img_mask_mode")
                masked_content = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content",
                                          elem_id="img2img_inpainting_fill")
                with gr.Row():
                    inpaint_area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture",
                                            label="Inpaint area", elem_id="img2img_inpaint_full_res")
                    padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                        elem_id="img2img_inpaint_full_res_padding")
            sampler, schedule, steps = build_sampler_row(ctx, "img2img")
            with gr.Row():
                restore_faces = build_restore_faces("img2img")
                tiling = build_tiling("img2img")
            resize_by_tab = gr.State("to")
            with gr.Tabs(elem_id="img2img_tabs_resize"):
                with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as tab_resize_to:
                    with gr.Row():
                        with gr.Column(scale=4):
                            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="img2img_width")
                            height = gr.Slider(64, 2048, value=512, step=8, label="Height",
                                               elem_id="img2img_height")
                        with gr.Column(scale=1, min_width=120):
                            batch_count, batch_size = build_batch_sliders("img2img")
                with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as tab_resize_by:
                    scale_by = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale", elem_id="img2img_scale")
            sdxl = build_sdxl_size(ctx, "img2img", checkpoint, width, height)
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id="img2img_cfg_scale")
            denoise = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                elem_id="img2img_denoising_strength")
            refiner = build_refiner(ctx, "img2img", checkpoint)
            last_seed = gr.State(-1)
            seeds = build_seed_row("img2img", last_seed)
            clip_skip = build_clip_skip(ctx, "img2img")
            control = build_control_accordions(ctx, "img2img", checkpoint, width, height)
            extension_controls = build_extension_accordions(ctx, "img2img")
            script = build_script_row(ctx, "img2img")  # SD upscale is one of its entries

        with gr.Column(scale=1, elem_id="img2img_results"):
            results = build_results("img2img", last_seed)

    for tab, name in ((tab_img2img, "img2img"), (tab_sketch, "sketch"), (tab_inpaint, "inpaint"),
                      (tab_upload, "inpaint_upload"), (tab_outpaint, "outpaint"), (tab_batch, "batch")):
        tab.select(lambda name=name: name, outputs=mode, queue=False)
    tab_resize_to.select(lambda: "to", outputs=resize_by_tab, queue=False)
    tab_resize_by.select(lambda: "by", outputs=resize_by_tab, queue=False)

    inputs = [mode, checkpoint, row.prompt, row.negative, row.styles, init_image, sketch, inpaint, upload_image,
              upload_mask, outpaint_image, pad_left, pad_right, pad_up, pad_down, batch_input, batch_output,
              batch_masks, resize_mode, resize_by_tab, scale_by, mask_blur, mask_mode, masked_content,
              inpaint_area, padding, sampler, schedule, steps, cfg, denoise, width, height, *seeds.inputs,
              batch_count, batch_size, clip_skip, restore_faces, tiling, *sdxl.inputs, *refiner.inputs,
              *control.inputs, *extension_controls.inputs, *script.inputs]
    n_sdxl, n_refiner = len(sdxl.inputs), len(refiner.inputs)
    n_control, n_extension = len(control.inputs), extension_controls.count

    # `request` first: Gradio fills a gr.Request only among the leading positional parameters.
    def run(request: gr.Request, mode_name, checkpoint_title, prompt_text, negative_text, style_names, image, sketch_value,
            inpaint_value, up_image, up_mask, out_image, left, right, up, down, in_dir, out_dir, mask_dir,
            resize, resize_tab, factor, blur, mask_mode_name, content, area, pad, sampler_name, schedule_type,
            n_steps, cfg_scale, strength, w, h, seed_value, subseed, subseed_strength, resize_w, resize_h, n_iter,
            n_batch, skip_layers, restore, tile, *more):
        sdxl_values, more = more[:n_sdxl], more[n_sdxl:]
        refiner_values, more = more[:n_refiner], more[n_refiner:]
        control_values, extension_values = more[:n_control], more[n_control:n_control + n_extension]
        skipped: list[tuple[str, str]] = []
        try:
            fields = dict(
                prompt=prompt_text or "", negative_prompt=negative_text or "", styles=style_names or [],
                sampler_name=sampler_name, scheduler=schedule_type, steps=int(n_steps), cfg_scale=float(cfg_scale),
                **SeedWidgets.request_fields(seed_value, subseed, subseed_strength, resize_w, resize_h),
                n_iter=int(n_iter),
                batch_size=int(n_batch), clip_skip=int(skip_layers), checkpoint=checkpoint_title or None,
                denoising_strength=float(strength), resize_mode=resize, mask_blur=int(blur),
                inpainting_fill=content, inpaint_full_res=area == "Only masked",
                inpaint_full_res_padding=int(pad), inpainting_mask_invert=mask_mode_name == "Inpaint not masked",
                width=int(w), height=int(h), controlnet_units=control.units_from(list(control_values)),
                restore_faces=bool(restore), tiling=bool(tile), **sdxl.request_fields(list(sdxl_values)),
                **refiner.request_fields(list(refiner_values)),
                **extension_controls.request_fields(list(extension_values)),
                **script.request_fields(list(more[n_control + n_extension:])))
            if mode_name == "batch":
                if not allow_folders:
                    raise ValueError("folder batches are turned off on this server")
                generate = _folder_batch(ctx, fields, in_dir, out_dir, mask_dir, skipped)
            else:
                picture, mask = _picture_and_mask(mode_name, image, sketch_value, inpaint_value, up_image, up_mask,
                                                  out_image)
                if resize_tab == "by":
                    fields["width"], fields["height"] = size_by_factor(picture, float(factor))
                if mode_name == "outpaint":
                    fields["outpaint"] = {"left": int(left), "right": int(right), "up": int(up), "down": int(down)}
                    if not any(fields["outpaint"].values()):
                        raise ValueError("choose how many pixels to add on at least one side")
                req = Img2ImgRequest.model_validate({**fields, "init_images": [picture], "mask": mask},
                                                    context=ctx.service.request_context)
                generate = lambda job: ctx.service.img2img(req, job)  # noqa: E731
        except Exception as exc:  # validation: say which field is wrong
            raise gr.Error(user_message(exc)) from None
        yield from stream_job(ctx, jobs, request.session_hash, "img2img", generate)
        if skipped:
            gr.Warning("Skipped: " + "; ".join(f"{name}: {why}" for name, why in skipped))

    row.generate.click(run, inputs=inputs, outputs=results.outputs, concurrency_limit=None)
    row.prompt.submit(run, inputs=inputs, outputs=results.outputs, concurrency_limit=None)
    wire_job_buttons(row, jobs)

    def interrogate(mode_name, prompt_text, image, sketch_value, inpaint_value, up_image, out_image):
        try:
            if mode_name == "inpaint_upload":  # its mask is not needed for a caption
                picture = to_rgb(up_image) if up_image is not None else None
            else:
                picture, _ = _picture_and_mask(mode_name, image, sketch_value, inpaint_value, up_image, None,
                                               out_image)
        except ValueError:  # no picture in this sub-tab (or the batch tab)
            picture = None
        return caption_for(ctx, picture, prompt_text)

    interrogate_button.click(interrogate, inputs=[mode, row.prompt, init_image, sketch, inpaint, upload_image,
                                                  outpaint_image], outputs=row.prompt, concurrency_limit=None)
    segment.send_inpaint.click(send_segment_to_inpaint, inputs=segment.picture_and_mask,
                               outputs=[inpaint, mode_tabs, mode], queue=False)
    return Img2ImgTab(
        row=row, results=results, mode_tabs=mode_tabs, mode=mode, init_image=init_image, sketch=sketch,
        inpaint=inpaint, upload_image=upload_image, upload_mask=upload_mask, outpaint_image=outpaint_image,
        sampler=sampler, schedule=schedule, steps=steps, cfg=cfg, denoise=denoise, width=width, height=height,
        seed=seeds.seed, batch_count=batch_count, batch_size=batch_size, clip_skip=clip_skip, resize_mode=resize_mode,
        mask_blur=mask_blur, mask_mode=mask_mode, masked_content=masked_content, inpaint_area=inpaint_area,
        padding=padding, restore_faces=restore_faces, segment=segment, control=control, seeds=seeds, tiling=tiling,
        sdxl=sdxl, refiner=refiner)


def _need(image, what: str) -> Image.Image:
    if image is None:
        raise ValueError(f"drop {what} first")
    return image


def _picture_and_mask(mode: str, image, sketch_value, inpaint_value, up_image, up_mask,
                      out_image) -> tuple[Image.Image, Image.Image | None]:
    """The init picture (RGB) and the mask (L, or None) of the sub-tab in use."""
    if mode == "img2img":
        return to_rgb(_need(image, "an image")), None
    if mode == "sketch":
        value = sketch_value or {}
        return to_rgb(_need(value.get("composite"), "an image to sketch on")), None
    if mode == "inpaint":
        value = inpaint_value or {}
        background = to_rgb(_need(value.get("background"), "an image to inpaint"))
        return background, painted_mask(value.get("layers") or [], background.size)
    if mode == "inpaint_upload":
        picture = to_rgb(_need(up_image, "an image"))
        return picture, to_mask(_need(up_mask, "a mask"), picture.size)
    if mode == "outpaint":
        return to_rgb(_need(out_image, "an image to extend")), None
    raise ValueError(f"unknown img2img mode {mode!r}")


def painted_mask(layers: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """Everything painted on any layer (its alpha), white on black, the size of the picture."""
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size)
        mask.paste(255, mask=alpha)
    return mask


def _folder_batch(ctx: AppContext, fields: dict, input_dir: str, output_dir: str, mask_dir: str,
                  skipped: list[tuple[str, str]]):
    options = ctx.options.options

    def generate(job) -> GenerationResult:
        batch = run_folder_batch(ctx.service, fields, input_dir, output_dir, mask_dir, job,
                                 jpeg_quality=options.jpeg_quality, fmt=options.samples_format)
        skipped.extend(batch.skipped)  # reported once the results are shown
        return GenerationResult(images=batch.images, infotexts=batch.infotexts, seeds=batch.seeds,
                                paths=batch.paths, interrupted=batch.interrupted)

    return generate
