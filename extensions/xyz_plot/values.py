"""A1111's X/Y/Z plot value syntax: comma-separated values (CSV, so "a, b" values may be quoted), integer
and float ranges (`1-5`, `1-10 (+2)`, `10-1 (-3)`, `1-10 [5]`), typed and checked per axis.

A1111 quirks not copied: a range counts down when it ends below its start (A1111 gives nothing for
`10-1`), a range with a step includes its end (`10-1 (-3)` is 10, 7, 4, 1; A1111 stops at 4), and a
float range does not overshoot its end by rounding error.
"""
from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterable
from io import StringIO

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


def _range_pattern(number: str) -> re.Pattern:
    # start-end, then either (step) or [count]
    return re.compile(rf"\s*({number})\s*-\s*({number})(?:\s*\(\s*({number})\s*\)|\s*\[\s*(\d+)\s*\])?\s*")


_INT_RANGE = _range_pattern(_INT)
_FLOAT_RANGE = _range_pattern(_FLOAT)
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")


def split_csv(text: str) -> list[str]:
    """Values as A1111 reads a values box: CSV (quotes group a value with commas), each stripped."""
    rows = csv.reader(StringIO(text), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def to_csv(values: Iterable[object]) -> str:
    """The values box text for a list (what A1111 writes for dropdown values in the infotext)."""
    with StringIO() as out:
        csv.writer(out).writerow([str(v) for v in values])
        return out.getvalue().strip()


def _number(text: str) -> str:
    return text.replace(" ", "")


def _linspace(start: float, end: float, count: int) -> list[float]:
    if count < 1:
        raise ValueError(f"a range needs a count of at least 1, got [{count}]")
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _stepped(start: float, end: float, step: float | None, text: str) -> list[float]:
    step = step if step is not None else (1 if end >= start else -1)
    if step == 0:
        raise ValueError(f"the range {text.strip()!r} has a step of 0")
    if (end - start) * step < 0:
        raise ValueError(f"the range {text.strip()!r} steps away from its end")
    count = math.floor((end - start) / step + 1e-9) + 1
    return [start + i * step for i in range(count)]


def expand_ints(values: Iterable[str]) -> list[int]:
    """Whole numbers, each value possibly a range; a value that is not one names itself."""
    found: list[int] = []
    for value in values:
        if not value:
            continue
        match = _INT_RANGE.fullmatch(value)
        if match:
            start, end = int(_number(match[1])), int(_number(match[2]))
            if match[4] is not None:  # [count]: evenly spread, truncated to whole numbers as A1111
                found += [int(v) for v in _linspace(start, end, int(match[4]))]
            else:
                step = int(_number(match[3])) if match[3] is not None else None
                found += [int(v) for v in _stepped(start, end, step, value)]
            continue
        try:
            found.append(int(_number(value)))
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number or a range such as 1-5, 1-10 (+2), 1-10 [5]") from None
    return found


def expand_floats(values: Iterable[str]) -> list[float]:
    """Numbers, each value possibly a range (rounded to 10 places so 0.1 steps stay 0.1, 0.2, ...)."""
    found: list[float] = []
    for value in values:
        if not value:
            continue
        match = _FLOAT_RANGE.fullmatch(value)
        if match:
            start, end = float(_number(match[1])), float(_number(match[2]))
            if match[4] is not None:
                found += _linspace(start, end, int(match[4]))
            else:
                step = float(_number(match[3])) if match[3] is not None else None
                found += _stepped(start, end, step, value)
            continue
        try:
            found.append(float(_number(value)))
        except ValueError:
            raise ValueError(f"{value!r} is not a number or a range such as 0.1-0.5 (+0.1), 1-2 [3]") from None
    return [round(v, 10) for v in found]


def parse_size(value: str) -> str:
    """"512x768" (width x height), normalized; anything else names itself."""
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512x768 (width x height)")
    return f"{int(match[1])}x{int(match[2])}"


def permutations(values: list[str]) -> list[tuple[str, ...]]:
    """Prompt order: every order of the tokens."""
    if len(values) > 7:  # 8! = 40320 cells is no plot anyone waits for
        raise ValueError(f"Prompt order with {len(values)} tokens would make {math.factorial(len(values))} "
                         "pictures; use at most 7 tokens")
    return list(itertools.permutations(values))


def parse_values(kind: str, raw: list[str]) -> list:
    """The typed values of an axis of one kind (int, float, str, keep_empty, size, permutations)."""
    if kind == "int":
        return expand_ints(raw)
    if kind == "float":
        return expand_floats(raw)
    if kind == "size":
        return [parse_size(v) for v in raw if v]
    if kind == "permutations":
        return permutations([v for v in raw if v])
    if kind == "keep_empty":  # Prompt S/R: an empty replacement removes the searched text
        return list(raw)
    return [v for v in raw if v]


def format_number(value: object) -> object:
    """A value as A1111 shows it in a label (floats rounded to 8 places)."""
    return round(value, 8) if isinstance(value, float) else value
