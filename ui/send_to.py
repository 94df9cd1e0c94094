"""How pictures and their parameters travel between tabs.

- Under each gallery: "Send to img2img" / "Send to inpaint" take the clicked
  picture and its infotext to the img2img tab, filling every field it names.
- PNG Info: "Send to txt2img" / "img2img" / "inpaint" do the same for a dropped file.
- The paste button beside each prompt reads an infotext pasted into the
  prompt box and fills the fields, as A1111's does.
"""
from __future__ import annotations

import gradio as gr
from PIL import Image

from backend.generation.samplers import BUILTIN_SAMPLERS, SamplerCatalog
from backend.images.infotext import parse_infotext
from backend.images.loading import ImageInputError, open_image, to_rgb
from ui import paste_fields as pf
from ui.img2img import Img2ImgTab
from ui.png_info import PngInfoTab
from ui.refiner import RefinerWidgets
from ui.txt2img import Txt2ImgTab
from ui.widgets import ResultWidgets


def txt2img_target(tab: Txt2ImgTab, samplers: SamplerCatalog = BUILTIN_SAMPLERS) -> pf.PasteTarget:
    hires = tab.hires
    return (pf.common_readers(tab.row.prompt, tab.row.negative, tab.sampler, tab.schedule, tab.steps, tab.cfg,
                              tab.seed, tab.width, tab.height, tab.clip_skip, samplers)
            + pf.hires_readers(hires.enabled, hires.upscaler, hires.steps, hires.denoise, hires.scale,
                               hires.resize_x, hires.resize_y)
            + pf.restore_faces_reader(tab.restore_faces) + pf.tiling_reader(tab.tiling)
            + pf.seed_extra_readers(tab.seeds) + pf.control_readers(tab.control.units)
            + pf.sdxl_size_readers(tab.sdxl.numbers, tab.sdxl.fields) + _refiner(tab.refiner))


def img2img_target(tab: Img2ImgTab, samplers: SamplerCatalog = BUILTIN_SAMPLERS) -> pf.PasteTarget:
    return (pf.common_readers(tab.row.prompt, tab.row.negative, tab.sampler, tab.schedule, tab.steps, tab.cfg,
                              tab.seed, tab.width, tab.height, tab.clip_skip, samplers)
            + pf.img2img_readers(tab.denoise, tab.resize_mode, tab.mask_blur, tab.mask_mode, tab.masked_content,
                                 tab.inpaint_area, tab.padding)
            + pf.restore_faces_reader(tab.restore_faces) + pf.tiling_reader(tab.tiling)
            + pf.seed_extra_readers(tab.seeds) + pf.control_readers(tab.control.units)
            + pf.sdxl_size_readers(tab.sdxl.numbers, tab.sdxl.fields) + _refiner(tab.refiner))


def _refiner(widgets: RefinerWidgets) -> pf.PasteTarget:
    return pf.refiner_readers(widgets.enabled, widgets.checkpoint, widgets.switch_at, widgets.titles)


def _gallery_pick(gallery, selected, infotexts) -> tuple[Image.Image, str]:
    if not gallery:
        raise gr.Error("Generate or pick a picture first")
    index = selected if isinstance(selected, int) and 0 <= selected < len(gallery) else 0
    item = gallery[index][0] if isinstance(gallery[index], (tuple, list)) else gallery[index]
    try:
        picture = open_image(item, "the picture") if isinstance(item, str) else to_rgb(item)
    except ImageInputError as err:
        raise gr.Error(str(err)) from None
    texts = infotexts or []
    return picture, texts[index] if index < len(texts) else ""


def _editor_value(picture: Image.Image) -> dict:
    return {"background": picture, "layers": [], "composite": picture}


def wire_send_to(main_tabs: gr.Tabs, txt2img: Txt2ImgTab, img2img: Img2ImgTab, png_info: PngInfoTab,
                 samplers: SamplerCatalog = BUILTIN_SAMPLERS) -> None:
    t2i_target, i2i_target = txt2img_target(txt2img, samplers), img2img_target(img2img, samplers)
    t2i_fields, i2i_fields = pf.components(t2i_target), pf.components(i2i_target)
    to_img2img = [main_tabs, img2img.mode_tabs, img2img.mode, img2img.init_image, *i2i_fields]
    to_inpaint = [main_tabs, img2img.mode_tabs, img2img.mode, img2img.inpaint, *i2i_fields]

    def img2img_update(picture: Image.Image, text: str) -> list:
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img"), "img2img", picture,
                *pf.paste_values(text, i2i_target)]

    def inpaint_update(picture: Image.Image, text: str) -> list:
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected="inpaint"), "inpaint", _editor_value(picture),
                *pf.paste_values(text, i2i_target)]

    def from_gallery(results: ResultWidgets) -> None:
        picked = [results.gallery, results.selected, results.infotexts]
        results.send_img2img.click(lambda g, s, t: img2img_update(*_gallery_pick(g, s, t)), inputs=picked,
                                   outputs=to_img2img, queue=False)
        results.send_inpaint.click(lambda g, s, t: inpaint_update(*_gallery_pick(g, s, t)), inputs=picked,
                                   outputs=to_inpaint, queue=False)

    from_gallery(txt2img.results)
    from_gallery(img2img.results)

    def dropped(image) -> Image.Image:
        if image is None:
            raise gr.Error("Drop a picture first")
        return to_rgb(image)

    png_info.send_txt2img.click(
        lambda text: [gr.Tabs(selected="txt2img"), *pf.paste_values(text, t2i_target)],
        inputs=png_info.text, outputs=[main_tabs, *t2i_fields], queue=False)
    png_info.send_img2img.click(lambda image, text: img2img_update(dropped(image), text),
                                inputs=[png_info.image, png_info.text], outputs=to_img2img, queue=False)
    png_info.send_inpaint.click(lambda image, text: inpaint_update(dropped(image), text),
                                inputs=[png_info.image, png_info.text], outputs=to_inpaint, queue=False)

    def paste_from_prompt(target: pf.PasteTarget):
        def paste(text: str) -> list:
            if not _has_parameters(text):
                gr.Warning("Paste a picture's parameters (its infotext) into the prompt box first")
                return [gr.skip()] * len(target)
            return pf.paste_values(text, target)
        return paste

    txt2img.row.paste.click(paste_from_prompt(t2i_target), inputs=txt2img.row.prompt, outputs=t2i_fields,
                            queue=False)
    img2img.row.paste.click(paste_from_prompt(i2i_target), inputs=img2img.row.prompt, outputs=i2i_fields,
                            queue=False)


def _has_parameters(text: str | None) -> bool:
    if not text:
        return False
    params = parse_infotext(text)
    return any(key in params for key in ("Steps", "Sampler", "Seed", "Size"))
