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

    `choices` is a list, or a callable for lists that change: `choices(studio)` gets the studio's `Choices`
    (checkpoints, ...). `visible` is a bool, or a callable taking the same arguments.

    `depends_on` names other args of the same script (or accordion) that this one follows: their current
    values are passed to the callables after `studio`, in that order, and the UI asks again whenever one of
    them changes (X/Y/Z plot: the values dropdown offers the samplers once "Sampler" is the axis type, and
    hides when the axis has no list). A value not among the new choices is dropped. Where the values are not
    known (the API's script-info) each is None.
    """

    name: str
    label: str
    kind: ArgKind = "text"
    default: Any = None
    choices: Sequence[str] | Callable[..., Sequence[str]] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    depends_on: str | tuple[str, ...] = ()  # a name or names; kept as a tuple
    visible: bool | Callable[..., bool] = True

    def __post_init__(self) -> None:
        names = (self.depends_on,) if isinstance(self.depends_on, str) else tuple(self.depends_on)
        if self.name in names:
            raise ValueError(f"arg {self.name!r} cannot depend on itself")
        object.__setattr__(self, "depends_on", names)

    def _given(self, values: Sequence[Any]) -> list[Any]:
        wanted = len(self.depends_on)
        return [*values[:wanted], *[None] * (wanted - len(values))]

    def choices_for(self, studio: "Choices", *values: Any) -> list[str]:
        """What the dropdown offers; `values`: those of `depends_on` now, in its order (None where missing)."""
        if not callable(self.choices):
            return list(self.choices)
        return list(self.choices(studio, *self._given(values)) or ())

    def visible_for(self, studio: "Choices", *values: Any) -> bool:
        return bool(self.visible(studio, *self._given(values)) if callable(self.visible) else self.visible)


def check_dependencies(args: Sequence[Arg]) -> None:
    """Refuse a `depends_on` that names no arg of the same set: it would never update."""
    names = {arg.name for arg in args}
    for arg in args:
        missing = [name for name in arg.depends_on if name not in names]
        if missing:
            raise ValueError(f"arg {arg.name!r} depends on {', '.join(map(repr, missing))}, which is not among "
                             f"its script's args ({', '.join(sorted(names))})")


class Choices(Protocol):
    """What a dropdown may offer, as the studio knows it now (the `studio` an Arg's callables get)."""

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


@dataclass(frozen=True)
class Sampler:
    """A sampler of the Sampling method dropdown: a diffusers scheduler class and the options it is built
    with (on top of the model's own noise schedule: betas, prediction type, timestep spacing)."""

    name: str
    scheduler_class: type  # a diffusers SchedulerMixin subclass; built with from_config
    options: dict[str, Any] = field(default_factory=dict)
    schedule_types: tuple[str, ...] = ("Automatic",)  # of "Automatic", "Uniform", "Karras", "Exponential", ...
    aliases: tuple[str, ...] = ()
