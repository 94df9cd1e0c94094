"""The typed things an extension hands the studio (a script, a tab, controls, a setting, a route) and the
things the studio hands back to its hooks (a step, a picture to postprocess, a script's run).

Extensions reach these through `backend.extensions.api`, which re-exports them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

ArgKind = Literal["text", "textarea", "number", "slider", "checkbox", "dropdown", "multiselect"]
JobKind = Literal["txt2img", "img2img"]


@dataclass(frozen=True)
class Arg:
    """One input of a script or of an extension's accordion: how the UI shows it and its default.

    `choices` may be a callable taking the studio's `Choices`, for lists that change (checkpoints, ...).
    """

    name: str
    label: str
    kind: ArgKind = "text"
    default: Any = None
    choices: Sequence[str] | Callable[["Choices"], Sequence[str]] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def choices_for(self, studio: "Choices") -> list[str]:
        return list(self.choices(studio) if callable(self.choices) else self.choices)


class Choices(Protocol):
    """What a dropdown may offer, as the studio knows it now."""

    def choices(self, what: str) -> list[str]:
        """`what`: checkpoints, vaes, samplers, schedule types, hires upscalers, upscalers, styles."""


@dataclass
class StepInfo:
    """What a per-step callback sees after each sampling step (read it; do not keep the tensor)."""

    latents: Any  # torch.Tensor, batch x channels x h/8 x w/8
    step: int  # steps done in this pass
    timestep: Any
    total: int  # steps of this pass
    request: Any


@dataclass
class ImageToPostprocess:
    """One finished picture; a postprocess hook may replace `image` and add infotext entries to `params`."""

    image: Image.Image
    seed: int
    prompt: str
    request: Any
    params: dict[str, object] = field(default_factory=dict)


class ScriptRun(Protocol):
    """What a script's `run(run, request, args)` works with: the studio's own service, queue and folders."""

    kind: JobKind

    def generate(self, request) -> Any:
        """One job through the studio's service (its turn in the fair queue, saving, infotext): a result
        with images, infotexts, seeds, info, warnings, interrupted."""

    def with_changes(self, request, **fields):
        """A validated copy of `request` with `fields` changed (a ValueError names a bad one)."""

    def choices(self, what: str) -> list[str]: ...

    def progress(self, done: int, total: int, text: str = "") -> None:
        """Say that part `done` of `total` starts (the progress bar counts whole parts)."""

    @property
    def interrupted(self) -> bool: ...

    def save_grid(self, image: Image.Image, infotext: str) -> Any:
        """Save a grid the way the studio saves grids (outputs/txt2img-grids, ...); returns its path or None."""

    def result(self, images: list[Image.Image], infotexts: list[str], seeds: list[int], *, info: dict | None = None,
               warnings: Sequence[str] = (), interrupted: bool = False, paths: Sequence[Any] = ()) -> Any:
        """What the script answers: the studio's result type (the UI and the API show it as any job's)."""


@dataclass(frozen=True)
class Script:
    """An entry of the Script dropdown: it runs the whole job itself (X/Y/Z plot, prompts from file)."""

    title: str
    run: Callable[[ScriptRun, Any, dict[str, Any]], Any]
    args: tuple[Arg, ...] = ()  # in the order the API's positional script_args take them
    txt2img: bool = True
    img2img: bool = True

    def serves(self, kind: JobKind) -> bool:
        return self.txt2img if kind == "txt2img" else self.img2img


@dataclass(frozen=True)
class Controls:
    """An accordion on txt2img / img2img whose values arrive as `request.extension_args[ext_id]`."""

    title: str
    args: tuple[Arg, ...]
    tabs: tuple[JobKind, ...] = ("txt2img", "img2img")


@dataclass(frozen=True)
class Tab:
    """A tab of the studio: `build()` makes Gradio components inside it."""

    title: str
    build: Callable[[], None]


@dataclass(frozen=True)
class Setting:
    """A setting of the extension's own section in Settings; read it with `api.option(key)`."""

    key: str
    default: Any
    label: str
    kind: ArgKind = "text"
    choices: Sequence[str] = ()


@dataclass(frozen=True)
class Route:
    """An API route, served under /ext/<extension id>/ (behind --api-auth like the rest)."""

    path: str
    endpoint: Callable[..., Any]
    methods: tuple[str, ...] = ("GET",)


@dataclass(frozen=True)
class Upscaler:
    """An upscaler of the Extras tab and hires. fix: `upscale(image, scale) -> image`."""

    name: str
    upscale: Callable[[Image.Image, float], Image.Image]
    scale: float = 4.0
