"""The Extra Networks panel under a prompt: cards for checkpoints, LoRAs and embeddings.

Clicking a LoRA or embedding card puts its tag into the prompt (clicking it
again takes it out, as in A1111); clicking a checkpoint card selects that
checkpoint. The card's details, the LoRA's training metadata included, are
shown escaped: metadata comes from files downloaded from strangers.
"""
from __future__ import annotations

import html

import gradio as gr
from PIL import Image, ImageDraw

from backend.app_context import AppContext
from backend.networks.cards import ALL_FOLDERS, KINDS, SORTS, Card, all_cards, filter_cards, folders, training_metadata

THUMBNAIL = 160


def thumbnail(card: Card) -> Image.Image:
    if card.preview is not None:
        try:
            with Image.open(card.preview) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMBNAIL, THUMBNAIL))
                return im
        except (OSError, ValueError):
            pass  # a broken preview gets the plain card
    im = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (58, 62, 70))
    ImageDraw.Draw(im).text((8, THUMBNAIL // 2 - 6), card.name[:22], fill=(230, 230, 230))
    return im


def toggle_in_prompt(prompt: str, text: str) -> str:
    """Add `text` at the end of the prompt, or take it out if it is already there."""
    prompt = prompt or ""
    if text in prompt:
        return " ".join(prompt.replace(text, " ").split())
    return f"{prompt.rstrip()} {text}".strip() if prompt.strip() else text


def details_html(card: Card) -> str:
    rows = [("Name", card.name), ("File", card.path.name), ("Folder", card.folder or "(top)")]
    if card.description:
        rows.append(("About", card.description))
    rows += sorted(training_metadata(card).items())
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))[:500]}</td></tr>" for k, v in rows)
    return f'<table class="studio-network-details">{body}</table>'


def build_extra_networks(ctx: AppContext, tab: str, prompt: gr.Textbox, checkpoint: gr.Dropdown) -> None:
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks") as panel:
        with gr.Row():
            kind = gr.Radio(list(KINDS), value="LoRA", show_label=False, elem_id=f"{tab}_extra_kind")
            search = gr.Textbox(placeholder="Search...", show_label=False, elem_id=f"{tab}_extra_search", scale=2)
            sort = gr.Dropdown(list(SORTS), value="Name", show_label=False, elem_id=f"{tab}_extra_sort", scale=1)
            folder = gr.Dropdown([ALL_FOLDERS], value=ALL_FOLDERS, show_label=False, elem_id=f"{tab}_extra_folder",
                                 scale=1)
            refresh = gr.Button("🔄", elem_id=f"{tab}_extra_refresh", scale=0, min_width=48)
        cards = gr.Gallery(show_label=False, columns=6, height=360, allow_preview=False, object_fit="contain",
                           elem_id=f"{tab}_extra_cards")
        details = gr.HTML(elem_id=f"{tab}_extra_details")
        shown = gr.State([])

    def show(kind_name, needle, order, folder_name):
        every = all_cards(kind_name, ctx.networks, ctx.manager)
        chosen = filter_cards(every, needle, order, folder_name if folder_name in folders(every) else ALL_FOLDERS)
        gallery = [(thumbnail(c), c.name) for c in chosen]
        return gallery, gr.update(choices=folders(every)), chosen

    def refresh_all(kind_name, needle, order, folder_name):
        ctx.networks.refresh()
        ctx.manager.refresh()
        return show(kind_name, needle, order, folder_name)

    def pick(chosen: list[Card], prompt_text: str, evt: gr.SelectData):
        card = chosen[evt.index]
        if card.kind == "Checkpoints":
            return gr.skip(), gr.update(value=card.insert), details_html(card)
        return toggle_in_prompt(prompt_text, card.insert), gr.skip(), details_html(card)

    filters = [kind, search, sort, folder]
    panel.expand(show, inputs=filters, outputs=[cards, folder, shown], queue=False)
    for trigger in (kind.change, search.submit, sort.change, folder.change):
        trigger(show, inputs=filters, outputs=[cards, folder, shown], queue=False)
    refresh.click(refresh_all, inputs=filters, outputs=[cards, folder, shown], queue=False)
    cards.select(pick, inputs=[shown, prompt], outputs=[prompt, checkpoint, details], queue=False)
