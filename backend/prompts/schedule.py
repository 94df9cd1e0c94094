"""A1111 prompt editing and alternation: which text conditions which sampling step.

    [from:to:when]   `from` until step `when`, then `to`
    [to:when]        nothing, then `to`        [from::when]  `from`, then nothing
    [a|b|c]          a on step 1, b on step 2, c on step 3, a again...

`when` with a decimal point is a fraction of the steps (0.25), without one a
step number (5). They nest. `[word]` and `(word)` are attention, not editing,
and pass through untouched for the attention parser. A prompt that does not
parse (an unclosed bracket) is used as written, as A1111 does; stray closing
brackets are plain text.

`prompt_schedule` returns A1111's list of (end_at_step, text): sampling step
i (counted from 0) uses the first entry with i <= end_at_step.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


@dataclass
class _Scheduled:
    before: list
    after: list
    when: str  # as written: "." means a fraction of the steps

    def end_step(self, steps: int) -> int:
        value = float(self.when)
        return min(steps, int(value * steps if "." in self.when else value))


@dataclass
class _Alternate:
    options: list[list]


class _Unparsable(ValueError):
    pass


def _parse(text: str, pos: int = 0, closing: str | None = None) -> tuple[list, int]:
    """Items (str | _Scheduled | _Alternate) up to `closing`; returns them and the position after it."""
    items: list = []
    plain: list[str] = []

    def flush():
        if plain:
            items.append("".join(plain))
            plain.clear()

    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            plain.append(text[pos:pos + 2])  # escapes stay for the attention parser
            pos += 2
        elif ch == "[":
            flush()
            item, pos = _parse_bracket(text, pos + 1)
            items.append(item)
        elif ch == "(":
            flush()
            inner, pos = _parse(text, pos + 1, ")")
            items.extend(["(", *inner, ")"])
            pos += 1  # past the ")"
        elif closing is not None and ch in closing:
            flush()
            return items, pos
        else:
            plain.append(ch)
            pos += 1
    if closing is not None:
        raise _Unparsable("unclosed bracket")
    flush()
    return items, pos


def _parse_bracket(text: str, pos: int):
    """After '[': a scheduled edit, an alternation, or plain de-emphasis kept as '[...]'."""
    parts: list[list] = []
    separators: list[str] = []
    while True:
        part, pos = _parse(text, pos, ":|]")
        parts.append(part)
        sep = text[pos]
        pos += 1
        if sep == "]":
            break
        separators.append(sep)
    if separators and all(s == "|" for s in separators):
        return _Alternate(parts), pos
    if separators and all(s == ":" for s in separators) and len(parts) in (2, 3):
        last = parts[-1]
        number = _NUMBER.match(last[0]) if len(last) == 1 and isinstance(last[0], str) else None
        if number:
            before = parts[0] if len(parts) == 3 else []
            return _Scheduled(before=before, after=parts[-2], when=number.group(1)), pos
    # [word] (de-emphasis) or [word:1.2]-like text that is not an edit: keep it literally.
    joined: list = ["["]
    for i, part in enumerate(parts):
        if i:
            joined.append(separators[i - 1])
        joined.extend(part)
    joined.append("]")
    return _Group(joined), pos


@dataclass
class _Group:
    items: list


def _collect_steps(items: list, steps: int, found: set[int]) -> None:
    for item in items:
        if isinstance(item, _Scheduled):
            end = item.end_step(steps)
            if end >= 1:
                found.add(end)
            _collect_steps(item.before, steps, found)
            _collect_steps(item.after, steps, found)
        elif isinstance(item, _Alternate):
            found.update(range(1, steps + 1))
            for option in item.options:
                _collect_steps(option, steps, found)
        elif isinstance(item, _Group):
            _collect_steps(item.items, steps, found)


def _text_at(items: list, step: int, steps: int) -> str:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Scheduled):
            out.append(_text_at(item.before if step <= item.end_step(steps) else item.after, step, steps))
        elif isinstance(item, _Alternate):
            out.append(_text_at(item.options[(step - 1) % len(item.options)], step, steps))
        else:
            out.append(_text_at(item.items, step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] for one prompt over `steps` sampling steps."""
    try:
        items, _ = _parse(prompt)
    except _Unparsable:
        return [(steps, prompt)]
    found = {steps}
    _collect_steps(items, steps, found)
    return [(end, _text_at(items, end, steps)) for end in sorted(found)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text that conditions sampling step `step` (from 0)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]
