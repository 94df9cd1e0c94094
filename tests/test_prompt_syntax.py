"""A1111 prompt syntax, parsed as A1111 parses it: attention, BREAK, editing, alternation, tags, chunks."""
from __future__ import annotations

import pytest

from backend.prompts.attention import parse_attention
from backend.prompts.extra_networks import TagError, extract_tags, strip_tags
from backend.prompts.schedule import prompt_schedule, text_at_step


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
    ("(cat:1.3) dog", [("cat", 1.3), (" dog", 1.0)]),
    ("(cat:-0.5)", [("cat", -0.5)]),
    (r"\(cat\)", [("(cat)", 1.0)]),
    ("(unclosed", [("unclosed", 1.1)]),
    ("a ) b", [("a ) b", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a:1.2) (b:1.2)", [("a", 1.2), (" ", 1.0), ("b", 1.2)]),
    ("", [("", 1.0)]),
])
def test_attention_weights(text, expected):
    assert parse_attention(text) == expected


def test_nested_weights_multiply():
    assert parse_attention("((cat:1.5))") == [("cat", pytest.approx(1.5 * 1.1))]


@pytest.mark.parametrize("prompt, steps, expected", [
    ("a cat", 20, [(20, "a cat")]),
    ("a [dog:cat:10] in a hat", 20, [(10, "a dog in a hat"), (20, "a cat in a hat")]),
    ("a [dog:cat:0.25]", 20, [(5, "a dog"), (20, "a cat")]),
    ("a [cat:5]", 20, [(5, "a "), (20, "a cat")]),
    ("a [cat::5]", 20, [(5, "a cat"), (20, "a ")]),
    ("[a|b]", 3, [(1, "a"), (2, "b"), (3, "a")]),
    ("[[a:b:2]|c]", 3, [(1, "a"), (2, "c"), (3, "b")]),
    ("a [big] cat", 10, [(10, "a [big] cat")]),
    ("(a [x:y:3]:1.2)", 10, [(3, "(a x:1.2)"), (10, "(a y:1.2)")]),
    ("[unclosed:cat:3", 10, [(10, "[unclosed:cat:3")]),
    ("[a:b:50]", 20, [(20, "a")]),  # beyond the last step: never switches
])
def test_prompt_editing_schedules(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_schedule_step_lookup_switches_after_the_named_step():
    schedule = prompt_schedule("[dog:cat:10]", 20)
    assert [text_at_step(schedule, i) for i in (0, 9, 10, 11, 19)] == ["dog", "dog", "dog", "cat", "cat"]


def test_lora_tags_are_taken_out_with_their_weights():
    text, tags = extract_tags("a cat <lora:ink:0.8>, <lora:sub/detail:0.5:1.2> <lyco:soft> <lora:x:te=0.3:unet=0.9>")
    assert text == "a cat ,   "  # the spaces between tags stay, as in A1111
    assert [(t.kind, t.name, t.te_weight, t.unet_weight) for t in tags] == [
        ("lora", "ink", 0.8, 0.8), ("lora", "sub/detail", 0.5, 1.2), ("lora", "soft", 1.0, 1.0),
        ("lora", "x", 0.3, 0.9)]
    with pytest.raises(TagError, match="not a number"):
        extract_tags("<lora:ink:lots>")
    assert strip_tags("a <lora:ink:lots> b") == "a  b"
