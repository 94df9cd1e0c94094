"""`<lora:name:0.8>`-style tags: taken out of the prompt before it is encoded, as A1111 does.

    <lora:name>              weight 1 for the text encoder and the UNet
    <lora:name:0.8>          0.8 for both
    <lora:name:0.5:1.0>      text encoder 0.5, UNet 1.0
    <lora:name:te=0.5:unet=1>  the same, named

`lyco` is read as `lora` (LyCORIS files go through the same loader). Tags of
kinds nobody handles are left out of the prompt too, and reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r"<(\w+):([^>]+)>")
ALIASES = {"lyco": "lora"}


class TagError(ValueError):
    pass


@dataclass(frozen=True)
class NetworkTag:
    kind: str  # "lora", "hypernet", ...
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    text: str = ""  # as written


def _number(value: str, tag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise TagError(f"{tag}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise TagError(f"{tag}: {value!r} is not a finite number")
    return number


def parse_tag(kind: str, body: str, text: str) -> NetworkTag:
    name, *args = [a.strip() for a in body.split(":")]
    if not name:
        raise TagError(f"{text}: no name")
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    te = _number(named.get("te", positional[0] if positional else "1"), text)
    unet_default = positional[1] if len(positional) > 1 else str(te)
    unet = _number(named.get("unet", unet_default), text)
    return NetworkTag(kind=ALIASES.get(kind, kind), name=name, te_weight=te, unet_weight=unet, text=text)


def extract_tags(prompt: str) -> tuple[str, list[NetworkTag]]:
    """(the prompt without its tags, the tags in order). Raises TagError for a malformed weight."""
    tags: list[NetworkTag] = []

    def take(match: re.Match) -> str:
        tags.append(parse_tag(match.group(1).lower(), match.group(2), match.group(0)))
        return ""

    return _TAG.sub(take, prompt), tags


def strip_tags(prompt: str) -> str:
    """The prompt as the text encoder sees it: every `<kind:...>` tag removed, well-formed or not."""
    return _TAG.sub("", prompt)
