"""A1111 attention syntax: which words weigh how much.

    (word)       x 1.1, nested ((word)) x 1.21
    [word]       / 1.1
    (word:1.3)   x 1.3 (any number, negative included)
    \\( \\) \\[ \\]  literal brackets
    BREAK        ends the current 75-token chunk (kept as a marker, weight -1)

Unclosed brackets still apply to everything after them, as in A1111. Runs of
equal weight are merged, so "a (b) c" is [("a ", 1), ("b", 1.1), (" c", 1)].
"""
from __future__ import annotations

import re

BREAK = "BREAK"
ROUND = 1.1
SQUARE = 1 / 1.1

_TOKEN = re.compile(
    r"""(?P<escape>\\[()\[\]\\])"""  # an escaped bracket or backslash
    r"""|(?P<lone>\\)"""  # a lone backslash: dropped
    r"""|(?P<open>[(\[])"""
    r"""|:\s*(?P<weight>[+-]?[.\d]+)\s*\)"""  # ":1.3)" closes a round bracket with that weight
    r"""|(?P<close>[)\]])"""
    r"""|(?P<text>[^\\()\[\]:]+|:)""",
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...]; ("BREAK", -1) marks a chunk break."""
    pieces: list[list] = []  # [text, weight], weights multiplied in place as brackets close
    open_round: list[int] = []  # where each open bracket's span starts in `pieces`
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "escape":
            pieces.append([value[1], 1.0])
        elif kind == "lone":
            continue
        elif kind == "open":
            (open_round if value == "(" else open_square).append(len(pieces))
        elif kind == "weight" and open_round:
            scale(open_round.pop(), float(match.group("weight")))
        elif kind == "close" and value == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif kind == "close" and value == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:  # plain text, or a bracket with nothing to close
            for i, part in enumerate(_BREAK.split(value)):
                if i:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)

    merged: list[list] = []
    for piece in pieces or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]
