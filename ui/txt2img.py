"""The txt2img tab: prompt boxes on top, parameters left, gallery right, as in A1111.

Handlers stay thin: read widgets -> build a Txt2ImgRequest -> call the
generation service in a worker thread -> stream progress and preview.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from backend.app_context import AppContext
from backend.generation.request import HIRES_UPSCALERS, Txt2ImgRequest
from ui.controlnet import ControlWidgets, build_control_accordions
from ui.errors import user_message
from ui.extra_networks import build_extra_networks
from ui.live import build_live_toggle, wire_live
from ui.refiner import RefinerWidgets, build_refiner
from ui.scripts import build_extension_accordions, build_script_row
from ui.sdxl_size import SdxlSizeWidgets, build_sdxl_size
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


def hires_upscaler_choices(ctx: AppContext) -> list[str]:
    """Latent modes, Lanczos, Nearest, then the upscaler models in models/ESRGAN etc., as A1111 lists them."""
    models = [n for n in ctx.extras.upscalers.names() if n not in ("None", *HIRES_UPSCALERS)]
    return [*HIRES_UPSCALERS, *models]


@dataclass
class HiresWidgets:
    enabled: gr.Checkbox
    upscaler: gr.Dropdown
    steps: gr.Slider
    denoise: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider


@dataclass
class Txt2ImgTab:
    row: PromptRow
    results: ResultWidgets
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    clip_skip: gr.Slider
    hires: HiresWidgets
    restore_faces: gr.Checkbox
    control: ControlWidgets
    seeds: SeedWidgets
    tiling: gr.Checkbox
    sdxl: SdxlSizeWidgets
    refiner: RefinerWidgets

    @property
    def generate(self) -> gr.Button:
        return self.row.generate

    @property
    def gallery(self) -> gr.Gallery:
        return self.results.gallery


def build_txt2img_tab(ctx: AppContext, jobs: SessionJobs, checkpoint: gr.Dropdown) -> Txt2ImgTab:
    row = build_prompt_row(ctx, "txt2img")
    build_extra_networks(ctx, "txt2img", row.prompt, checkpoint)
    with gr.Row():
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            sampler, schedule, steps = build_sampler_row(ctx, "txt2img")
            with gr.Row():
                restore_faces = build_restore_faces("txt2img")
                tiling = build_tiling("txt2img")
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
                hr_enabled = gr.Checkbox(label="Enable", value=False, elem_id="txt2img_enable_hr")
                with gr.Row():
                    hr_upscaler = gr.Dropdown(label="Upscaler", choices=hires_upscaler_choices(ctx), value="Latent",
                                              elem_id="txt2img_hr_upscaler")
                    hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)",
                                         elem_id="txt2img_hires_steps")
                    hr_denoise = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                           elem_id="txt2img_denoising_strength")
                with gr.Row():
                    hr_scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                         elem_id="txt2img_hr_scale")
                    hr_resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                            elem_id="txt2img_hr_resize_x")
                    hr_resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                            elem_id="txt2img_hr_resize_y")
            refiner = build_refiner(ctx, "txt2img", checkpoint)
            with gr.Row():
                with gr.Column(scale=4):
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                with gr.Column(scale=1, min_width=120):
                    batch_count, batch_size = build_batch_sliders("txt2img")
            sdxl = build_sdxl_size(ctx, "txt2img", checkpoint, width, height)
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            last_seed = gr.State(-1)
            seeds = build_seed_row("txt2img", last_seed)
            clip_skip = build_clip_skip(ctx, "txt2img")
            control = build_control_accordions(ctx, "txt2img", checkpoint, width, height)
            extension_controls = build_extension_accordions(ctx, "txt2img")
            script = build_script_row(ctx, "txt2img")

        with gr.Column(scale=1, elem_id="txt2img_results"):
            live_toggle = build_live_toggle("txt2img")
            results = build_results("txt2img", last_seed)

    hires = HiresWidgets(enabled=hr_enabled, upscaler=hr_upscaler, steps=hr_steps, denoise=hr_denoise,
                         scale=hr_scale, resize_x=hr_resize_x, resize_y=hr_resize_y)
    inputs = [checkpoint, row.prompt, row.negative, row.styles, sampler, schedule, steps, cfg, width, height,
              *seeds.inputs, batch_count, batch_size, clip_skip, hr_enabled, hr_upscaler, hr_scale, hr_resize_x,
              hr_resize_y, hr_steps, hr_denoise, restore_faces, tiling, *sdxl.inputs, *refiner.inputs,
              *control.inputs, *extension_controls.inputs, *script.inputs]
    n_sdxl, n_control, n_extension = len(sdxl.inputs), len(control.inputs), extension_controls.count
    n_refiner = len(refiner.inputs)

    # `request` first: Gradio fills a gr.Request only among the leading positional parameters.
    def run(request: gr.Request, checkpoint_title, prompt_text, negative_text, style_names, sampler_name, schedule_type, n_steps,
            cfg_scale, w, h, seed_value, subseed, subseed_strength, resize_w, resize_h, n_iter, n_batch,
            skip_layers, hr_on, hr_up, hr_by, hr_x, hr_y, hr_n, hr_strength, restore, tile, *more, live=None):
        sdxl_values, more = more[:n_sdxl], more[n_sdxl:]
        refiner_values, more = more[:n_refiner], more[n_refiner:]
        control_values, extension_values = more[:n_control], more[n_control:n_control + n_extension]
        try:
            req = Txt2ImgRequest.model_validate(dict(
                prompt=prompt_text or "", negative_prompt=negative_text or "", styles=style_names or [],
                sampler_name=sampler_name, scheduler=schedule_type, steps=int(n_steps), cfg_scale=float(cfg_scale),
                width=int(w), height=int(h),
                **SeedWidgets.request_fields(seed_value, subseed, subseed_strength, resize_w, resize_h),
                n_iter=int(n_iter), batch_size=int(n_batch), clip_skip=int(skip_layers),
                checkpoint=checkpoint_title or None, restore_faces=bool(restore), tiling=bool(tile),
                hires={"enabled": bool(hr_on), "upscaler": hr_up, "upscale_by": float(hr_by),
                       "resize_x": int(hr_x), "resize_y": int(hr_y), "steps": int(hr_n),
                       "denoising_strength": float(hr_strength)},
                **sdxl.request_fields(list(sdxl_values)), **refiner.request_fields(list(refiner_values)),
                controlnet_units=control.units_from(list(control_values)),
                **extension_controls.request_fields(list(extension_values)),
                **script.request_fields(list(more[n_control + n_extension:]))),
                context=ctx.service.request_context)  # the studio's samplers, extensions' among them
        except Exception as exc:  # validation: say which field is wrong
            raise gr.Error(user_message(exc)) from None
        if live is not None:  # a live frame (ui/live.py) is a draft: not saved
            req = req.model_copy(update={"save_images": False})
        yield from stream_job(ctx, jobs, request.session_hash, "txt2img", lambda job: ctx.service.txt2img(req, job),
                              live=live)

    row.generate.click(run, inputs=inputs, outputs=results.outputs, concurrency_limit=None)
    row.prompt.submit(run, inputs=inputs, outputs=results.outputs, concurrency_limit=None)
    wire_job_buttons(row, jobs)
    wire_live(live_toggle, run, [row.prompt, row.negative, row.styles, sampler, schedule, steps, cfg, width, height,
                                 *seeds.inputs, clip_skip, restore_faces, tiling], inputs, results.outputs)
    return Txt2ImgTab(row=row, results=results, sampler=sampler, schedule=schedule, steps=steps, cfg=cfg,
                      width=width, height=height, seed=seeds.seed, batch_count=batch_count, batch_size=batch_size,
                      clip_skip=clip_skip, hires=hires, restore_faces=restore_faces, control=control, seeds=seeds,
                      tiling=tiling, sdxl=sdxl, refiner=refiner)
