"""Widget groups txt2img and img2img share: the prompt row, sampling settings, the results column.

Each builder returns a small dataclass of the components it made, so a tab
wires its own handlers and the "send to"/"paste" code can reach every field.
"""
from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from backend.app_context import AppContext
from backend.generation.job import JobControl
from backend.generation.samplers import SCHEDULE_TYPES
from backend.generation.service import GenerationResult
from ui.errors import user_message
from ui.live import LiveTicket
from ui.progress import progress_html
from ui.session_jobs import SessionJobs

POLL_SECONDS = 0.3


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    styles: gr.Dropdown
    paste: gr.Button


@dataclass
class SamplingWidgets:
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    clip_skip: gr.Slider


@dataclass
class ResultWidgets:
    gallery: gr.Gallery
    progress: gr.HTML
    preview: gr.Image
    info: gr.HTML
    last_seed: gr.State
    infotexts: gr.State  # the infotext of each gallery image, for "send to"
    selected: gr.State  # index of the gallery image the user clicked
    send_img2img: gr.Button
    send_inpaint: gr.Button

    @property
    def outputs(self) -> list:
        """What a generation handler yields into, in this order."""
        return [self.gallery, self.progress, self.preview, self.info, self.last_seed, self.infotexts]


def build_prompt_row(ctx: AppContext, tab: str) -> PromptRow:
    with gr.Row(elem_id=f"{tab}_toprow"):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (press Ctrl+Enter to generate)",
                                elem_id=f"{tab}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_neg_prompt")
        with gr.Column(scale=1, min_width=180):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
            with gr.Row():
                paste = gr.Button("\u2199\ufe0f", elem_id=f"{tab}_paste", size="sm", min_width=40, scale=0)
                styles = gr.Dropdown(label="Styles", choices=ctx.styles.names(), multiselect=True,
                                     elem_id=f"{tab}_styles", scale=4)
    return PromptRow(prompt=prompt, negative=negative, generate=generate, interrupt=interrupt, skip=skip,
                     styles=styles, paste=paste)


def build_sampler_row(ctx: AppContext, tab: str) -> tuple[gr.Dropdown, gr.Dropdown, gr.Slider]:
    with gr.Row():
        sampler = gr.Dropdown(label="Sampling method", choices=list(ctx.service.samplers.names()),
                              value=ctx.options.options.default_sampler, elem_id=f"{tab}_sampling")
        schedule = gr.Dropdown(label="Schedule type", choices=list(SCHEDULE_TYPES), value="Automatic",
                               elem_id=f"{tab}_scheduler")
    steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    return sampler, schedule, steps


def build_batch_sliders(tab: str) -> tuple[gr.Slider, gr.Slider]:
    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    return batch_count, batch_size


@dataclass
class SeedWidgets:
    """The seed row and A1111's "Extra" seed options under it."""

    seed: gr.Number
    extra: gr.Checkbox
    subseed: gr.Number
    subseed_strength: gr.Slider
    resize_w: gr.Slider
    resize_h: gr.Slider

    @property
    def inputs(self) -> list:
        return [self.seed, self.subseed, self.subseed_strength, self.resize_w, self.resize_h]

    @staticmethod
    def request_fields(seed, subseed, strength, resize_w, resize_h) -> dict:
        return {"seed": int(seed if seed is not None else -1), "subseed": int(subseed if subseed is not None else -1),
                "subseed_strength": float(strength or 0), "seed_resize_from_w": int(resize_w or 0),
                "seed_resize_from_h": int(resize_h or 0)}


def last_used(state, key: str) -> int:
    """The seed or variation seed of the last result, for ♻️ (-1 before any)."""
    return int(state.get(key, -1)) if isinstance(state, dict) else int(state if key == "seed" else -1)


def build_seed_row(tab: str, last_seed: gr.State) -> SeedWidgets:
    with gr.Row():
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=4)
        random_seed = gr.Button("\U0001f3b2", elem_id=f"{tab}_random_seed", size="sm", min_width=40, scale=0)
        reuse_seed = gr.Button("\u267b\ufe0f", elem_id=f"{tab}_reuse_seed", size="sm", min_width=40, scale=0)
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=0, min_width=80)
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as extras:
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{tab}_subseed", scale=4)
            random_subseed = gr.Button("\U0001f3b2", elem_id=f"{tab}_random_subseed", size="sm", min_width=40,
                                       scale=0)
            reuse_subseed = gr.Button("\u267b\ufe0f", elem_id=f"{tab}_reuse_subseed", size="sm", min_width=40,
                                      scale=0)
            strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                 elem_id=f"{tab}_subseed_strength", scale=4)
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                 elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_from_h")
    random_seed.click(lambda: -1, outputs=seed, queue=False)
    reuse_seed.click(lambda s: last_used(s, "seed"), inputs=last_seed, outputs=seed, queue=False)
    random_subseed.click(lambda: -1, outputs=subseed, queue=False)
    reuse_subseed.click(lambda s: last_used(s, "subseed"), inputs=last_seed, outputs=subseed, queue=False)
    extra.change(lambda shown: gr.update(visible=bool(shown)), inputs=extra, outputs=extras, queue=False)
    return SeedWidgets(seed=seed, extra=extra, subseed=subseed, subseed_strength=strength, resize_w=resize_w,
                       resize_h=resize_h)


def build_clip_skip(ctx: AppContext, tab: str) -> gr.Slider:
    return gr.Slider(1, 12, value=ctx.options.options.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                     elem_id=f"{tab}_clip_skip")


def build_restore_faces(tab: str) -> gr.Checkbox:
    # The model is the face_restoration_model setting, read when the job runs.
    return gr.Checkbox(label="Restore faces", value=False, elem_id=f"{tab}_restore_faces")


def build_tiling(tab: str) -> gr.Checkbox:
    return gr.Checkbox(label="Tiling", value=False, elem_id=f"{tab}_tiling",
                       info="a picture that tiles seamlessly left-right and top-bottom")


def build_results(tab: str, last_seed: gr.State) -> ResultWidgets:
    gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id=f"{tab}_gallery", height=520)
    with gr.Row():
        send_img2img = gr.Button("Send to img2img", elem_id=f"{tab}_send_to_img2img", size="sm")
        send_inpaint = gr.Button("Send to inpaint", elem_id=f"{tab}_send_to_inpaint", size="sm")
    progress = gr.HTML(elem_id=f"{tab}_progress")
    preview = gr.Image(label="Live preview", interactive=False, elem_id=f"{tab}_preview", height=200, type="pil")
    info = gr.HTML(elem_id=f"{tab}_info")
    selected = gr.State(0)
    gallery.select(_selected_index, outputs=selected, queue=False)
    return ResultWidgets(gallery=gallery, progress=progress, preview=preview, info=info, last_seed=last_seed,
                         infotexts=gr.State([]), selected=selected, send_img2img=send_img2img,
                         send_inpaint=send_inpaint)


def _selected_index(evt: gr.SelectData) -> int:
    return evt.index if isinstance(evt.index, int) else 0


def wire_job_buttons(row: PromptRow, jobs: SessionJobs) -> None:
    """Interrupt and Skip reach only the job of the browser session that presses them."""

    # Gradio passes the session only to parameters annotated gr.Request.
    def interrupt_own_job(request: gr.Request):
        if job := jobs.get(request.session_hash):
            job.interrupt()

    def skip_own_batch(request: gr.Request):
        if job := jobs.get(request.session_hash):
            job.skip()

    row.interrupt.click(interrupt_own_job, inputs=None, outputs=None, queue=False)
    row.skip.click(skip_own_batch, inputs=None, outputs=None, queue=False)


def stream_job(ctx: AppContext, jobs: SessionJobs, session: str, name: str,
               generate: Callable[[JobControl], GenerationResult], live: LiveTicket | None = None):
    """Run `generate` in a worker thread; yield progress, then the results (ResultWidgets.outputs order).

    With `live` (ui/live.py) the job is one live frame: a newer trigger interrupts it, and then it shows
    neither its picture nor its error, so the gallery ends on the newest frame."""
    opts = ctx.options.options
    job = jobs.start(session, opts.show_progress_every_n_steps if opts.live_previews_enable else 0)
    if live is not None:
        live.begin(job)
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = generate(job)
        except Exception as exc:  # shown to the user; the app keeps serving
            outcome["error"] = exc
        finally:
            job.finish()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    shown_preview = 0
    try:
        while worker.is_alive():
            snap = job.snapshot()
            preview = snap.preview if snap.preview_id != shown_preview else gr.skip()
            shown_preview = snap.preview_id
            yield gr.skip(), progress_html(snap), preview, gr.skip(), gr.skip(), gr.skip()
            time.sleep(POLL_SECONDS)
        worker.join()
    finally:
        jobs.finish(session, job)
        superseded = live is not None and not live.end(job)
    if superseded:  # clear this frame's progress; the gallery keeps what the newer frame shows
        yield gr.skip(), "", None, gr.skip(), gr.skip(), gr.skip()
        return
    if "error" in outcome:
        raise gr.Error(user_message(outcome["error"]))
    result = outcome["result"]
    captions = [(str(p) if p else img, text.split("\n")[0][:80]) for img, p, text in
                zip(result.images, result.paths or [None] * len(result.images), result.infotexts)]
    captions += [(m, "ControlNet map") for m in getattr(result, "control_maps", [])]
    subseeds = getattr(result, "info", {}).get("all_subseeds") or [-1]
    last = {"seed": result.seeds[0] if result.seeds else -1, "subseed": subseeds[0]}  # for the ♻️ buttons
    yield (captions, "", None, info_html(result.infotexts, result.interrupted, result.warnings), last,
           list(result.infotexts))


def info_html(infotexts: list[str], interrupted: bool, warnings: list[str] = ()) -> str:
    notes = "".join(f'<p class="studio-warning">⚠ {html.escape(w)}</p>' for w in warnings)
    if not infotexts:
        return notes + ("<p>Interrupted before any image was finished.</p>" if interrupted else "")
    note = notes + ("<p><b>Interrupted</b>: showing what was finished.</p>" if interrupted else "")
    body = html.escape(infotexts[0]).replace("\n", "<br>")
    return f'{note}<div class="studio-infotext" data-infotexts="{html.escape(json.dumps(infotexts))}">{body}</div>'
