"""The Extras tab: upscale and restore faces in one picture, several uploads, or a
folder on the server (hidden when the UI is exposed), as in A1111."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from backend.app_context import AppContext
from backend.extras.postprocess import MAX_EXTRAS_IMAGES, ExtrasRequest
from backend.extras.service import ExtrasResult
from backend.images.loading import open_mask
from ui.errors import user_message
from ui.segment import SegmentPanel, build_segment_panel
from ui.session_jobs import SessionJobs
from ui.widgets import stream_job

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class ExtrasTab:
    image: gr.Image
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    gallery: gr.Gallery
    submit: gr.Button
    segment: SegmentPanel


def upscaler_choices(ctx: AppContext) -> list[str]:
    return ctx.extras.upscalers.names()


def build_extras_tab(ctx: AppContext, jobs: SessionJobs, allow_folders: bool = True) -> ExtrasTab:
    source = gr.State("single")
    with gr.Row():
        with gr.Column(scale=1, elem_id="extras_settings"):
            with gr.Tabs(elem_id="mode_extras"):
                with gr.Tab("Single Image", elem_id="extras_single_tab") as tab_single:
                    # As stored (image_mode None, PNG): alpha, bit depth and the infotext reach the backend.
                    image = gr.Image(label="Source", type="pil", image_mode=None, format="png",
                                     sources=["upload", "clipboard"], elem_id="extras_image", height=360)
                with gr.Tab("Batch Process", elem_id="extras_batch_process_tab") as tab_batch:
                    files = gr.File(label="Batch Process", file_count="multiple", elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", elem_id="extras_batch_directory_tab",
                            visible=allow_folders) as tab_folder:
                    input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
                    output_dir = gr.Textbox(label="Output directory (empty: outputs/extras-images)",
                                            elem_id="extras_batch_output_dir")
                    show_results = gr.Checkbox(label="Show result images", value=True,
                                               elem_id="extras_show_extras_results")
                with gr.Tab("Segment", elem_id="extras_segment_tab"):
                    segment = build_segment_panel(ctx, "extras")
            submit = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            interrupt = gr.Button("Interrupt", elem_id="extras_interrupt", size="sm")
            resize_tab = gr.State("by")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as tab_by:
                    scale_by = gr.Slider(1.0, 8.0, value=4.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as tab_to:
                    with gr.Row():
                        to_w = gr.Number(label="Width", value=512, precision=0, elem_id="extras_upscaling_resize_w")
                        to_h = gr.Number(label="Height", value=512, precision=0, elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            with gr.Row():
                choices = upscaler_choices(ctx)
                upscaler_1 = gr.Dropdown(label="Upscaler 1", choices=choices, value="None", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(label="Upscaler 2", choices=choices, value="None", elem_id="extras_upscaler_2")
                refresh = gr.Button("🔄", elem_id="extras_refresh_upscalers", scale=0, min_width=48)
            visibility_2 = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                     elem_id="extras_upscaler_2_visibility")
            gfpgan = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                               elem_id="extras_gfpgan_visibility")
            with gr.Row():
                codeformer = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                       elem_id="extras_codeformer_visibility")
                codeformer_weight = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                              label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras_codeformer_weight")
        with gr.Column(scale=1, elem_id="extras_results"):
            gallery = gr.Gallery(label="Result", columns=2, format="png", elem_id="extras_gallery", height=520)
            progress = gr.HTML(elem_id="extras_progress")
            preview = gr.Image(visible=False)
            info = gr.HTML(elem_id="extras_info")
            last_seed, infotexts = gr.State(-1), gr.State([])

    tab_single.select(lambda: "single", outputs=source, queue=False)
    tab_batch.select(lambda: "batch", outputs=source, queue=False)
    tab_folder.select(lambda: "folder", outputs=source, queue=False)
    tab_by.select(lambda: "by", outputs=resize_tab, queue=False)
    tab_to.select(lambda: "to", outputs=resize_tab, queue=False)

    def run(request: gr.Request, mode, picture, uploads, in_dir, out_dir, show, by_or_to, factor, width, height,
            crop_to_fit, up_1, up_2, vis_2, gfpgan_vis, cf_vis, cf_weight):
        try:
            fields = dict(resize_mode="Scale by" if by_or_to == "by" else "Scale to", upscaling_resize=float(factor),
                          upscaling_resize_w=int(width or 0), upscaling_resize_h=int(height or 0),
                          upscaling_crop=bool(crop_to_fit), upscaler_1=up_1 or "None", upscaler_2=up_2 or "None",
                          extras_upscaler_2_visibility=float(vis_2), gfpgan_visibility=float(gfpgan_vis),
                          codeformer_visibility=float(cf_vis), codeformer_weight=float(cf_weight))
            chunks = _sources(mode, picture, uploads, in_dir, allow_folders)
            output = (out_dir or None) if mode == "folder" else None
            first = ExtrasRequest(images=chunks[0](), output_dir=output, **fields, names=[])  # checks the fields now
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None

        def work(job) -> ExtrasResult:
            # A folder can hold thousands of pictures: opened and processed a chunk at a time.
            total = ExtrasResult(images=[], infotexts=[])
            for index, chunk in enumerate(chunks):
                images, names = (first.images, chunk.names) if index == 0 else (chunk(), chunk.names)
                result = ctx.extras_service.run(first.model_copy(update={"images": images, "names": names}), job)
                total.infotexts += result.infotexts
                total.paths += result.paths
                total.messages += [m for m in result.messages if m not in total.messages]
                if mode != "folder" or show:
                    total.images += result.images
                if result.interrupted:
                    total.interrupted = True
                    break
            return total

        yield from stream_job(ctx, jobs, request.session_hash, "extras", work)

    inputs = [source, image, files, input_dir, output_dir, show_results, resize_tab, scale_by, to_w, to_h, crop,
              upscaler_1, upscaler_2, visibility_2, gfpgan, codeformer, codeformer_weight]
    submit.click(run, inputs=inputs, outputs=[gallery, progress, preview, info, last_seed, infotexts],
                 concurrency_limit=None)

    def interrupt_own_job(request: gr.Request):
        if job := jobs.get(request.session_hash):
            job.interrupt()

    interrupt.click(interrupt_own_job, queue=False)

    def rescan(first, second):
        ctx.extras.refresh()
        names = upscaler_choices(ctx)
        return (gr.update(choices=names, value=first if first in names else "None"),
                gr.update(choices=names, value=second if second in names else "None"))

    refresh.click(rescan, inputs=[upscaler_1, upscaler_2], outputs=[upscaler_1, upscaler_2], queue=False)
    return ExtrasTab(image=image, upscaler_1=upscaler_1, upscaler_2=upscaler_2, gallery=gallery, submit=submit,
                     segment=segment)


class _Chunk:
    """Up to MAX_EXTRAS_IMAGES pictures, opened when called."""

    def __init__(self, paths: list[Path], pictures: list | None = None):
        self.paths, self.pictures = paths, pictures
        self.names = [p.name for p in paths]

    def __call__(self) -> list:
        return self.pictures if self.pictures is not None else [open_mask(p, p.name) for p in self.paths]


def _sources(mode: str, picture, uploads, in_dir: str, allow_folders: bool) -> list[_Chunk]:
    """The pictures of the sub-tab in use, as stored, in chunks of at most MAX_EXTRAS_IMAGES."""
    if mode == "single":
        if picture is None:
            raise ValueError("drop a picture first")
        return [_Chunk([], [picture])]
    if mode == "batch":
        paths = [Path(getattr(f, "name", f)) for f in uploads or []]
        if not paths:
            raise ValueError("add pictures to the batch first")
    else:
        if not allow_folders:
            raise ValueError("folder batches are turned off on this server")
        folder = Path(in_dir or "")
        if not in_dir or not folder.is_dir():
            raise ValueError(f"input directory {in_dir!r} does not exist")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no pictures in {folder}")
    return [_Chunk(paths[i:i + MAX_EXTRAS_IMAGES]) for i in range(0, len(paths), MAX_EXTRAS_IMAGES)]
