"""The axes of the X/Y/Z plot: A1111 1.10's list, in its order (so an axis given by index means what it
means in A1111, for txt2img and for img2img separately), with what each changes in our request.

An axis A1111 has and this studio cannot vary (Eta, Sigma churn, Refiner checkpoint...) is listed without
`apply`, so choosing it is a clear error rather than a silently plain grid.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from .values import format_number

BOTH, TXT2IMG, IMG2IMG = "", "txt2img", "img2img"


class Changes:
    """The fields one cell changes in the plot's request, built up axis by axis (X, then Y, then Z)."""

    def __init__(self, request) -> None:
        self.request = request
        self.fields: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        return self.fields.get(name, getattr(self.request, name))

    def set(self, name: str, value: Any) -> None:
        self.fields[name] = value

    def part(self, name: str) -> dict:
        """A nested model (hires) as a dict to change; passed as a dict so the copy is validated."""
        if name not in self.fields:
            self.fields[name] = getattr(self.request, name).model_dump()
        return self.fields[name]

    def control_unit(self) -> dict:
        """ControlNet unit 0 as a dict to change (sd-webui-controlnet's axes act on the first unit too)."""
        if "controlnet_units" not in self.fields:
            units = list(self.request.controlnet_units)
            if not units:
                raise ValueError("the [ControlNet] axes need a ControlNet unit in the request")
            self.fields["controlnet_units"] = [unit.model_dump() for unit in units]
        return self.fields["controlnet_units"][0]


Apply = Callable[[Changes, Any, list], None]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str = "str"  # how values are read: int, float, str, keep_empty, size, permutations (values.py)
    apply: Apply | None = None  # None: A1111 has it, this studio cannot vary it
    tab: str = BOTH  # BOTH, TXT2IMG or IMG2IMG: which tab's list A1111 shows it in
    cost: float = 0.0  # A1111's: the costliest axis is the outer loop (each checkpoint loads once)
    choices: str | None = None  # the studio list (ScriptRun.choices) values must be in
    shown: str = "add"  # label text: "add" ("Steps: 20"), "plain", "join", "none", "basename"

    @property
    def supported(self) -> bool:
        return self.apply is not None

    def format(self, value: Any) -> str:
        """The grid label of one value, as A1111's format_value functions write it."""
        if self.shown == "none":
            return ""
        if self.shown == "join":
            return ", ".join(value)
        if self.shown == "basename":
            return PurePath(str(value)).name
        if self.shown == "plain":
            return str(format_number(value))
        return f"{self.label}: {format_number(value)}"


def field(name: str) -> Apply:
    def apply(changes: Changes, value, values) -> None:
        changes.set(name, value)
    return apply


def hires(name: str) -> Apply:
    def apply(changes: Changes, value, values) -> None:
        changes.part("hires")[name] = value
    return apply


def control(name: str) -> Apply:
    def apply(changes: Changes, value, values) -> None:
        changes.control_unit()[name] = value
    return apply


def nothing(changes: Changes, value, values) -> None:
    pass


def prompt_sr(changes: Changes, value: str, values: list) -> None:
    # The first value is the text searched; every value (the first too) replaces it.
    changes.set("prompt", changes.get("prompt").replace(values[0], value))
    changes.set("negative_prompt", changes.get("negative_prompt").replace(values[0], value))


def reorder(prompt: str, tokens: tuple[str, ...]) -> str:
    """The prompt with `tokens` put in this order where the tokens stood (A1111's Prompt order)."""
    parts, rest = [], prompt
    for token in sorted(tokens, key=prompt.find):  # the slots, in the order they appear
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token):]
    return "".join(part + token for part, token in zip(parts, tokens)) + rest


def prompt_order(changes: Changes, value: tuple[str, ...], values: list) -> None:
    changes.set("prompt", reorder(changes.get("prompt"), value))


def denoising(changes: Changes, value: float, values: list) -> None:
    # txt2img's denoising strength is hires. fix's (A1111's p.denoising_strength)
    if "init_images" in type(changes.request).model_fields:
        changes.set("denoising_strength", value)
    else:
        changes.part("hires")["denoising_strength"] = value


def styles(changes: Changes, value: str, values: list) -> None:
    changes.set("styles", [*changes.get("styles"), *(s.strip() for s in value.split(",") if s.strip())])


def size(changes: Changes, value: str, values: list) -> None:
    width, height = value.split("x")
    changes.set("width", int(width))
    changes.set("height", int(height))


def face_restore(changes: Changes, value: str, values: list) -> None:
    wanted = value.strip().lower()
    models = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN"}
    if wanted in models:
        changes.set("restore_faces", True)
        changes.set("face_restoration_model", models[wanted])
    else:
        changes.set("restore_faces", wanted in ("true", "yes", "y", "1"))


# A1111 1.10.0's axis_options, in order; the tab marks AxisOptionTxt2Img / AxisOptionImg2Img entries.
# ("Skip Early CFG" came after 1.10.0, in A1111's PR #16282, between "Schedule rho" and "Beta schedule alpha";
# it is in EXTRA_AXES so that 1.10 clients' indices from "Beta schedule alpha" on stay right.)
AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", nothing, shown="none"),
    Axis("Seed", "int", field("seed")),
    Axis("Var. seed", "int", field("subseed")),
    Axis("Var. strength", "float", field("subseed_strength")),
    Axis("Steps", "int", field("steps")),
    Axis("Hires steps", "int", hires("steps"), tab=TXT2IMG),
    Axis("CFG Scale", "float", field("cfg_scale")),
    Axis("Image CFG Scale", "float", tab=IMG2IMG),
    Axis("Prompt S/R", "keep_empty", prompt_sr, shown="plain"),
    Axis("Prompt order", "permutations", prompt_order, shown="join"),
    Axis("Sampler", "str", field("sampler_name"), tab=TXT2IMG, choices="samplers", shown="plain"),
    Axis("Hires sampler", "str", tab=TXT2IMG, choices="samplers"),
    Axis("Sampler", "str", field("sampler_name"), tab=IMG2IMG, choices="samplers", shown="plain"),
    Axis("Checkpoint name", "str", field("checkpoint"), cost=1.0, choices="checkpoints", shown="basename"),
    Axis("Negative Guidance minimum sigma", "float"),
    Axis("Sigma Churn", "float"),
    Axis("Sigma min", "float"),
    Axis("Sigma max", "float"),
    Axis("Sigma noise", "float"),
    Axis("Schedule type", "str", field("scheduler"), choices="schedule types"),
    Axis("Schedule min sigma", "float"),
    Axis("Schedule max sigma", "float"),
    Axis("Schedule rho", "float"),
    Axis("Beta schedule alpha", "float"),
    Axis("Beta schedule beta", "float"),
    Axis("Eta", "float"),
    Axis("Clip skip", "int", field("clip_skip")),
    Axis("Denoising", "float", denoising),
    Axis("Initial noise multiplier", "float"),
    Axis("Extra noise", "float"),
    Axis("Hires upscaler", "str", hires("upscaler"), tab=TXT2IMG, choices="hires upscalers"),
    Axis("Cond. Image Mask Weight", "float", tab=IMG2IMG),
    Axis("VAE", "str", field("vae"), cost=0.7, choices="vaes"),
    Axis("Styles", "str", styles, choices="styles"),
    Axis("UniPC Order", "int", cost=0.5),
    Axis("Face restore", "str", face_restore, shown="plain"),
    Axis("Token merging ratio", "float"),
    Axis("Token merging ratio high-res", "float"),
    Axis("Always discard next-to-last sigma"),
    Axis("SGM noise multiplier"),
    Axis("Refiner checkpoint", cost=1.0),
    Axis("Refiner switch at", "float"),
    Axis("RNG source"),
    Axis("FP8 mode", cost=0.9),
    Axis("Size", "size", size),
)

# Axes A1111 gets from extensions (sd-webui-controlnet) or that we add: after A1111's list, so its
# indices stay A1111's.
EXTRA_AXES: tuple[Axis, ...] = (
    Axis("Seed resize from-1", "int", field("seed_resize_from_w")),
    Axis("Seed resize from-2", "int", field("seed_resize_from_h")),
    Axis("[ControlNet] Weight", "float", control("weight")),
    Axis("[ControlNet] Guidance Start", "float", control("guidance_start")),
    Axis("[ControlNet] Guidance End", "float", control("guidance_end")),
    Axis("Skip Early CFG", "float"),  # A1111 after 1.10.0; by label only
)

ALIASES = {"controlnet weight": "[ControlNet] Weight", "seed resize from width": "Seed resize from-1",
           "seed resize from height": "Seed resize from-2"}


def axes_for(kind: str) -> list[Axis]:
    """A1111's list for one tab (what its `type="index"` dropdown indexes)."""
    return [a for a in AXES if a.tab in (BOTH, kind)]


def axis_by_label(label: Any) -> Axis | None:
    """The axis a type dropdown shows by label (any case), else None (an index, a name no axis has)."""
    if not isinstance(label, str):
        return None
    wanted = ALIASES.get(label.strip().lower(), label.strip()).lower()
    return next((a for a in (*AXES, *EXTRA_AXES) if a.label.lower() == wanted), None)


def supported_labels() -> list[str]:
    """What the type dropdowns offer: the axes this studio can vary, each label once, A1111's order."""
    return list(dict.fromkeys(a.label for a in (*AXES, *EXTRA_AXES) if a.supported))


def find_axis(given: Any, kind: str, letter: str) -> Axis:
    """The axis a type input names: a label (any case) or A1111's index for this tab."""
    if given is None or (isinstance(given, str) and not given.strip()):
        return AXES[0]
    listed = axes_for(kind)
    if isinstance(given, float) and given.is_integer():  # a JSON client may send 4.0
        given = int(given)
    if isinstance(given, int) and not isinstance(given, bool) or str(given).strip().isdigit():
        index = int(str(given).strip())
        if not 0 <= index < len(listed):
            raise ValueError(f"{letter} type {index} is not an axis index: {kind} has axes 0 to {len(listed) - 1}")
        return _usable(listed[index], letter)
    wanted = str(given).strip().lower()
    wanted = ALIASES.get(wanted, wanted).lower()
    for axis in (*listed, *EXTRA_AXES):
        if axis.label.lower() == wanted:
            return _usable(axis, letter)
    other = next((a for a in AXES if a.label.lower() == wanted), None)
    if other is not None:
        raise ValueError(f"{letter} type {other.label!r} is an axis of {other.tab} only, not of {kind}")
    raise ValueError(f"{letter} type {given!r} is not an X/Y/Z plot axis; the axes are: "
                     f"{', '.join(supported_labels())}")


def _usable(axis: Axis, letter: str) -> Axis:
    if not axis.supported:
        raise ValueError(f"{letter} type {axis.label!r}: this studio's X/Y/Z plot cannot vary {axis.label} "
                         f"(it has no such setting); the axes it can vary are: {', '.join(supported_labels())}")
    return axis
