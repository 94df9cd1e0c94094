"""The page: checkpoint picker on top, tabs below, in the layout A1111 users know."""
from __future__ import annotations

import html
import logging

import gradio as gr

from backend.app_context import AppContext
from ui.errors import user_message
from ui.extension_tabs import build_extension_tabs
from ui.extensions_tab import build_extensions_tab
from ui.extras import build_extras_tab
from ui.img2img import build_img2img_tab
from ui.png_info import build_png_info_tab
from ui.segment import send_segment_to_inpaint
from ui.send_to import wire_send_to
from ui.session_jobs import SessionJobs
from ui.settings_tab import build_settings_tab
from ui.txt2img import build_txt2img_tab

log = logging.getLogger(__name__)

CSS = """
.studio-progress { position: relative; height: 22px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); border-radius: 4px; overflow: hidden; }
.studio-progress-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft); }
.studio-progress-text { position: relative; padding-left: 6px; font-size: 0.85em; }
#refresh_checkpoints { max-width: 48px; }
"""


def checkpoint_choices(ctx: AppContext) -> list[str]:
    return [e.title for e in ctx.manager.checkpoints() if e.error is None]


def selected_checkpoint(ctx: AppContext) -> str | None:
    wanted = ctx.options.options.sd_model_checkpoint
    if wanted:
        try:
            return ctx.manager.find(wanted).title
        except ValueError:
            log.warning("the saved checkpoint %r is not in the list any more", wanted)
    default = ctx.manager.default_checkpoint()
    return default.title if default else None


def native_size(ctx: AppContext, title: str | None) -> int:
    """The loaded or scanned model's own size: 512 SD1, 768 SD2-v, 1024 SDXL, 128 the demo."""
    try:
        info = ctx.manager.find(title) if title else None
    except ValueError:
        info = None
    return info.variant.native_size if info and info.variant else 512


def status_line(ctx: AppContext) -> str:
    entries = ctx.manager.checkpoints()
    usable = [e for e in entries if e.error is None]
    lines = []
    folders = ", ".join(str(d) for d in ctx.manager.checkpoint_dirs)
    if usable and all(e.builtin for e in usable):
        lines.append(f"Using the built-in demo model: it draws simple coloured shapes at 128 px. "
                     f"Put real checkpoints in `{folders}` and press 🔄.")
    if not usable:
        lines.append(f"No usable checkpoint yet: put `.safetensors` or `.ckpt` files in `{folders}` and press 🔄.")
    for e in entries:
        if e.error:
            lines.append(f"⚠ `{html.escape(e.name)}` is not usable: {html.escape(e.error)}")
    return "\n\n".join(lines)


def build_ui(ctx: AppContext, allow_folders: bool = True) -> gr.Blocks:
    """The whole page. `allow_folders`: offer img2img's folder batch (off when the UI is exposed)."""
    jobs = SessionJobs()
    with gr.Blocks(title="Stable Diffusion Studio", analytics_enabled=False) as demo:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=checkpoint_choices(ctx),
                                     value=selected_checkpoint(ctx), elem_id="setting_sd_model_checkpoint",
                                     scale=4, allow_custom_value=False)
            vae = gr.Dropdown(label="SD VAE", choices=ctx.networks.vaes.choices(), value=ctx.options.options.sd_vae,
                              elem_id="setting_sd_vae", scale=2, allow_custom_value=False)
            refresh = gr.Button("🔄", elem_id="refresh_checkpoints", scale=0, min_width=48)
        status = gr.Markdown(status_line(ctx), elem_id="checkpoint_status")

        with gr.Tabs(elem_id="tabs") as main_tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(ctx, jobs, checkpoint)
            with gr.Tab("img2img", id="img2img"):
                img2img = build_img2img_tab(ctx, jobs, checkpoint, allow_folders)
            with gr.Tab("Extras", id="extras"):
                extras = build_extras_tab(ctx, jobs, allow_folders)
            with gr.Tab("PNG Info", id="pnginfo"):
                png_info = build_png_info_tab()
            with gr.Tab("Settings", id="settings"):
                build_settings_tab(ctx)
            with gr.Tab("Extensions", id="extensions"):
                build_extensions_tab(ctx)
            build_extension_tabs(ctx)

        wire_send_to(main_tabs, txt2img, img2img, png_info, ctx.service.samplers)
        extras.segment.send_inpaint.click(lambda value: (gr.Tabs(selected="img2img"), *send_segment_to_inpaint(value)),
                                          inputs=extras.segment.picture_and_mask,
                                          outputs=[main_tabs, img2img.inpaint, img2img.mode_tabs, img2img.mode],
                                          queue=False)

        def do_refresh(current):
            ctx.manager.refresh()
            ctx.networks.refresh()
            ctx.control.refresh()
            ctx.extras.refresh()
            choices = checkpoint_choices(ctx)
            value = current if current in choices else selected_checkpoint(ctx)
            vaes = ctx.networks.vaes.choices()
            chosen_vae = ctx.options.options.sd_vae if ctx.options.options.sd_vae in vaes else "Automatic"
            return gr.update(choices=choices, value=value), status_line(ctx), gr.update(choices=vaes, value=chosen_vae)

        def pick_vae(choice):
            # A quick setting, as in A1111: it applies to the next generation; the checkpoint is not reloaded.
            ctx.options.update(sd_vae=choice or "Automatic")

        def pick(title):
            if not title:
                return gr.skip(), status_line(ctx), *[gr.skip()] * 4
            try:
                loaded = ctx.service.queue.on_device_now(lambda: ctx.manager.load(title))
                ctx.options.update(sd_model_checkpoint=loaded.info.title)
            except Exception as exc:  # the old model keeps serving; put the picker back
                gr.Warning(user_message(exc))
                return gr.update(value=selected_checkpoint(ctx)), status_line(ctx), *[gr.skip()] * 4
            # Loading computes the hash, which changes the title: refresh the choices.
            size = loaded.variant.native_size
            return (gr.update(choices=checkpoint_choices(ctx), value=loaded.info.title), status_line(ctx),
                    size, size, size, size)

        # Settings apply without a restart: each page load reads the current default sampler.
        def on_page_load():
            size = native_size(ctx, selected_checkpoint(ctx))
            sampler = ctx.options.options.default_sampler
            return sampler, size, size, sampler, size, size

        sizes = [txt2img.width, txt2img.height, img2img.width, img2img.height]
        demo.load(on_page_load, outputs=[txt2img.sampler, txt2img.width, txt2img.height,
                                         img2img.sampler, img2img.width, img2img.height], queue=False)
        refresh.click(do_refresh, inputs=checkpoint, outputs=[checkpoint, status, vae], queue=False)
        vae.input(pick_vae, inputs=vae, outputs=None, queue=False)
        checkpoint.input(pick, inputs=checkpoint, outputs=[checkpoint, status, *sizes])
    return demo
