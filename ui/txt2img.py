"""The txt2img tab: prompt boxes on top, parameters left, gallery right, as in A1111.

Handlers stay thin: read widgets -> build a Txt2ImgRequest -> call the
generation service in a worker thread -> stream progress and preview.
"""
from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import dataclass

import gradio as gr

from backend.app_context import AppContext
from backend.generation.request import HIRES_UPSCALERS, Txt2ImgRequest
from backend.generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from ui.errors import user_message
from ui.progress import progress_html
from ui.session_jobs import SessionJobs

POLL_SECONDS = 0.3


@dataclass
class Txt2ImgTab:
    generate: gr.Button
    gallery: gr.Gallery
    sampler: gr.Dropdown
    width: gr.Slider
    height: gr.Slider


def build_txt2img_tab(ctx: AppContext, jobs: SessionJobs, checkpoint: gr.Dropdown) -> Txt2ImgTab:
    options = ctx.options.options
    with gr.Row(elem_id="txt2img_toprow"):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (press Ctrl+Enter to generate)",
                                elem_id="txt2img_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Column(scale=1, min_width=180):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="txt2img_skip", size="sm")
            styles = gr.Dropdown(label="Styles", choices=ctx.styles.names(), multiselect=True,
                                 elem_id="txt2img_styles")

    with gr.Row():
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            with gr.Row():
                sampler = gr.Dropdown(label="Sampling method", choices=list(SAMPLER_NAMES),
                                      value=options.default_sampler, elem_id="txt2img_sampling")
                schedule = gr.Dropdown(label="Schedule type", choices=list(SCHEDULE_TYPES), value="Automatic",
                                       elem_id="txt2img_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
                hr_enabled = gr.Checkbox(label="Enable", value=False, elem_id="txt2img_enable_hr")
                with gr.Row():
                    hr_upscaler = gr.Dropdown(label="Upscaler", choices=list(HIRES_UPSCALERS), value="Latent")
                    hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)")
                    hr_denoise = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength")
                with gr.Row():
                    hr_scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by")
                    hr_resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to")
                    hr_resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to")
            with gr.Row():
                with gr.Column(scale=4):
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                with gr.Column(scale=1, min_width=120):
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            with gr.Row():
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed", scale=4)
                random_seed = gr.Button("\U0001f3b2", elem_id="txt2img_random_seed", size="sm", min_width=40, scale=0)
                reuse_seed = gr.Button("\u267b\ufe0f", elem_id="txt2img_reuse_seed", size="sm", min_width=40, scale=0)
            clip_skip = gr.Slider(1, 12, value=options.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                                  elem_id="txt2img_clip_skip")

        with gr.Column(scale=1, elem_id="txt2img_results"):
            gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id="txt2img_gallery", height=520)
            progress = gr.HTML(elem_id="txt2img_progress")
            preview = gr.Image(label="Live preview", visible=True, interactive=False, elem_id="txt2img_preview",
                               height=200, type="pil")
            info = gr.HTML(elem_id="txt2img_info")
            last_seed = gr.State(-1)

    inputs = [checkpoint, prompt, negative, styles, sampler, schedule, steps, cfg, width, height, seed,
              batch_count, batch_size, clip_skip, hr_enabled, hr_upscaler, hr_scale, hr_resize_x, hr_resize_y,
              hr_steps, hr_denoise]

    def run(checkpoint_title, prompt_text, negative_text, style_names, sampler_name, schedule_type, n_steps,
            cfg_scale, w, h, seed_value, n_iter, n_batch, skip_layers, hr_on, hr_up, hr_by, hr_x, hr_y, hr_n,
            hr_strength, request: gr.Request):
        try:
            req = Txt2ImgRequest(
                prompt=prompt_text or "", negative_prompt=negative_text or "", styles=style_names or [],
                sampler_name=sampler_name, scheduler=schedule_type, steps=int(n_steps), cfg_scale=float(cfg_scale),
                width=int(w), height=int(h), seed=int(seed_value if seed_value is not None else -1),
                n_iter=int(n_iter), batch_size=int(n_batch), clip_skip=int(skip_layers),
                checkpoint=checkpoint_title or None,
                hires={"enabled": bool(hr_on), "upscaler": hr_up, "upscale_by": float(hr_by),
                       "resize_x": int(hr_x), "resize_y": int(hr_y), "steps": int(hr_n),
                       "denoising_strength": float(hr_strength)})
        except Exception as exc:  # validation: say which field is wrong
            raise gr.Error(user_message(exc)) from None
        yield from _stream_job(ctx, jobs, request.session_hash, req)

    outputs = [gallery, progress, preview, info, last_seed]
    generate.click(run, inputs=inputs, outputs=outputs, concurrency_limit=None)
    prompt.submit(run, inputs=inputs, outputs=outputs, concurrency_limit=None)

    # Gradio passes the session only to parameters annotated gr.Request.
    def interrupt_own_job(request: gr.Request):
        if job := jobs.get(request.session_hash):
            job.interrupt()

    def skip_own_batch(request: gr.Request):
        if job := jobs.get(request.session_hash):
            job.skip()

    interrupt.click(interrupt_own_job, inputs=None, outputs=None, queue=False)
    skip.click(skip_own_batch, inputs=None, outputs=None, queue=False)
    random_seed.click(lambda: -1, outputs=seed, queue=False)
    reuse_seed.click(lambda s: s, inputs=last_seed, outputs=seed, queue=False)
    return Txt2ImgTab(generate=generate, gallery=gallery, sampler=sampler, width=width, height=height)


def _stream_job(ctx: AppContext, jobs: SessionJobs, session: str, req: Txt2ImgRequest):
    opts = ctx.options.options
    job = jobs.start(session, opts.show_progress_every_n_steps if opts.live_previews_enable else 0)
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = ctx.service.txt2img(req, job)
        except Exception as exc:  # shown to the user; the app keeps serving
            outcome["error"] = exc
        finally:
            job.finish()

    worker = threading.Thread(target=work, name="txt2img", daemon=True)
    worker.start()
    shown_preview = 0
    try:
        while worker.is_alive():
            snap = job.snapshot()
            preview = snap.preview if snap.preview_id != shown_preview else gr.skip()
            shown_preview = snap.preview_id
            yield gr.skip(), progress_html(snap), preview, gr.skip(), gr.skip()
            time.sleep(POLL_SECONDS)
        worker.join()
    finally:
        jobs.finish(session, job)
    if "error" in outcome:
        raise gr.Error(user_message(outcome["error"]))
    result = outcome["result"]
    captions = [(str(p) if p else img, text.split("\n")[0][:80]) for img, p, text in
                zip(result.images, result.paths or [None] * len(result.images), result.infotexts)]
    yield captions, "", None, info_html(result.infotexts, result.interrupted), result.seeds[0] if result.seeds else -1


def info_html(infotexts: list[str], interrupted: bool) -> str:
    if not infotexts:
        return "<p>Interrupted before any image was finished.</p>" if interrupted else ""
    note = "<p><b>Interrupted</b>: showing what was finished.</p>" if interrupted else ""
    body = html.escape(infotexts[0]).replace("\n", "<br>")
    return f'{note}<div class="studio-infotext" data-infotexts="{html.escape(json.dumps(infotexts))}">{body}</div>'

