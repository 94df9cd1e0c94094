"""The Extra Networks panel: cards, search, sort, folders, tags into the prompt, metadata escaped."""
from __future__ import annotations

import os
import time

from PIL import Image

from backend.networks.cards import all_cards, filter_cards, folders
from tests.fixtures.tiny_networks import write_embedding, write_kohya_lora
from ui.extra_networks import details_html, thumbnail, toggle_in_prompt


def _collection(ctx):
    pipe = ctx.manager.load("sd1.safetensors").pipe
    loras = ctx.networks.loras.folders[0]
    write_kohya_lora(pipe, loras / "ink.safetensors", metadata={"ss_output_name": "ink-v2",
                                                                "ss_tag_frequency": '<script>alert("x")</script>'})
    write_kohya_lora(pipe, loras / "styles" / "watercolour.safetensors", seed=2)
    Image.new("RGB", (300, 200), (200, 10, 10)).save(loras / "ink.preview.png")
    old = time.time() - 3600
    os.utime(loras / "ink.safetensors", (old, old))
    write_embedding(ctx.networks.embeddings.folders[0] / "glow.pt", pipe.text_encoder.config.hidden_size)
    ctx.networks.refresh()


def test_cards_search_sort_and_folders(app_context):
    _collection(app_context)
    loras = all_cards("LoRA", app_context.networks, app_context.manager)
    assert [c.name for c in filter_cards(loras)] == ["ink", "watercolour"]
    assert [c.name for c in filter_cards(loras, sort="Date modified")] == ["watercolour", "ink"]
    assert [c.name for c in filter_cards(loras, search="V2")] == ["ink"]  # the alias counts
    assert folders(loras) == ["All", "styles"]
    assert [c.name for c in filter_cards(loras, folder="styles")] == ["watercolour"]
    assert [c.insert for c in filter_cards(loras)] == ["<lora:ink:1>", "<lora:watercolour:1>"]
    assert [c.insert for c in all_cards("Textual Inversion", app_context.networks, app_context.manager)] == ["glow"]
    checkpoints = all_cards("Checkpoints", app_context.networks, app_context.manager)
    assert "sd1" in [c.name for c in checkpoints]


def test_card_thumbnails_use_the_preview_beside_the_file(app_context):
    _collection(app_context)
    ink, water = filter_cards(all_cards("LoRA", app_context.networks, app_context.manager))
    assert thumbnail(ink).getpixel((10, 10)) == (200, 10, 10)
    assert water.preview is None and thumbnail(water).size == (160, 160)


def test_training_metadata_is_shown_escaped(app_context):
    _collection(app_context)
    ink = filter_cards(all_cards("LoRA", app_context.networks, app_context.manager))[0]
    shown = details_html(ink)
    assert "<script>" not in shown and "&lt;script&gt;" in shown and "ss_output_name" in shown


def test_clicking_a_card_adds_its_tag_and_clicking_again_takes_it_out():
    prompt = toggle_in_prompt("a cat", "<lora:ink:1>")
    assert prompt == "a cat <lora:ink:1>"
    assert toggle_in_prompt(prompt, "<lora:ink:1>") == "a cat"
    assert toggle_in_prompt("", "glow") == "glow"


def test_the_page_builds_with_the_panel_and_the_vae_quick_setting(app_context):
    from ui.app import build_ui

    demo = build_ui(app_context)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"txt2img_extra_networks", "img2img_extra_networks", "txt2img_extra_cards", "setting_sd_vae"} <= ids
