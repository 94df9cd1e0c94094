"""StyleStore: A1111 styles.csv, starter set, A1111 merge rules."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

import backend.prompts.styles as styles_module
from backend.prompts.styles import Style, StyleStore, merge_prompt

STARTER = Path(styles_module.__file__).with_name("starter_styles.csv")
STARTER_NAMES = [
    "photographic", "cinematic", "anime", "cartoon", "comic book", "digital art", "fantasy art",
    "line art", "low poly", "pixel art", "watercolor", "oil painting", "isometric", "neon punk",
    "origami", "3d model",
]


def _write(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "prompt", "negative_prompt"])
        writer.writerows(rows)


@pytest.fixture
def store(tmp_path) -> StyleStore:
    path = tmp_path / "styles.csv"
    _write(path, [
        ("wrap", "photo of {prompt}, 35mm", "cartoon, {prompt}"),
        ("tail", "masterpiece, best quality", "lowres, bad hands"),
        ("empty neg", "sharp", ""),
    ])
    return StyleStore(path, STARTER)


def test_starter_copied_on_first_load(tmp_path):
    path = tmp_path / "user" / "styles.csv"
    store = StyleStore(path, STARTER)
    assert store.names() == STARTER_NAMES
    assert path.read_bytes() == STARTER.read_bytes()
    for name in STARTER_NAMES:
        style = store.get(name)
        assert "{prompt}" in style.prompt and style.negative_prompt, name


def test_existing_user_file_is_not_overwritten(store, tmp_path):
    assert store.names() == ["wrap", "tail", "empty neg"]
    assert "photographic" not in (tmp_path / "styles.csv").read_text()


def test_apply_with_placeholder(store):
    assert store.apply("a cat", "blurry", ["wrap"]) == ("photo of a cat, 35mm", "cartoon, blurry")


def test_apply_without_placeholder_appends(store):
    assert store.apply("a cat", "blurry", ["tail"]) == (
        "a cat, masterpiece, best quality", "blurry, lowres, bad hands")
    # Empty parts are skipped, so no stray ", ".
    assert store.apply("", "", ["tail"]) == ("masterpiece, best quality", "lowres, bad hands")
    assert store.apply("a cat", "blurry", ["empty neg"]) == ("a cat, sharp", "blurry")


def test_styles_apply_in_order(store):
    assert store.apply("a cat", "", ["wrap", "tail"])[0] == (
        "photo of a cat, 35mm, masterpiece, best quality")
    assert store.apply("a cat", "", ["tail", "wrap"])[0] == (
        "photo of a cat, masterpiece, best quality, 35mm")


def test_unknown_style_names_it(store):
    with pytest.raises(ValueError, match="'nope'"):
        store.apply("a cat", "", ["wrap", "nope"])
    assert store.get("nope") is None


def test_quotes_and_commas_survive(tmp_path):
    path = tmp_path / "styles.csv"
    _write(path, [("quoted", 'a "quoted", {prompt}, with: colon', 'neg, "q"')])
    store = StyleStore(path, STARTER)
    assert store.get("quoted") == Style("quoted", 'a "quoted", {prompt}, with: colon', 'neg, "q"')
    assert store.apply("x", "", ["quoted"]) == ('a "quoted", x, with: colon', 'neg, "q"')


def test_reload_sees_edits(store, tmp_path):
    assert "new" not in store.names()
    _write(tmp_path / "styles.csv", [("new", "{prompt}!", "")])
    store.reload()
    assert store.names() == ["new"]


def test_old_a1111_text_column_and_bom(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("\ufeffname,text\nold,\"{prompt}, retro\"\n,skipped\n", encoding="utf-8")
    store = StyleStore(path, STARTER)
    assert store.names() == ["old"]
    assert store.apply("car", "neg", ["old"]) == ("car, retro", "neg")


def test_merge_prompt():
    assert merge_prompt("{prompt} and {prompt}", "x") == "x and x"
    assert merge_prompt("", " x ") == "x"
