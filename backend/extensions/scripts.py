"""Running a Script-dropdown entry: the studio's side of `ScriptRun`, and the built-in "SD upscale" entry.

A script runs a whole job itself (X/Y/Z plot runs one job per cell) through the same GenerationService:
each of its jobs takes its own turn in the fair queue, is saved and gets its infotext like any other, and
the job control the UI and the API watch counts the script's parts.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from backend.extensions.specs import Arg, Script
from backend.generation.job import JobControl
from backend.generation.request import HIRES_UPSCALERS
from backend.generation.result import GenerationResult
from backend.generation.samplers import SCHEDULE_TYPES
from backend.images.saving import FilenameTags, save_image

if TYPE_CHECKING:
    from backend.generation.service import GenerationService


class UnknownScriptError(ValueError):
    """A script_name that no entry of the Script dropdown has (the API answers 422 naming it)."""


class StudioChoices:
    """The lists a script's dropdowns offer, read from the service's libraries when asked."""

    def __init__(self, service: GenerationService) -> None:
        self._service = service

    def choices(self, what: str) -> list[str]:
        service = self._service
        upscalers = service.extras.library.upscalers.names() if service.extras else ["None", "Lanczos", "Nearest"]
        lists = {
            "checkpoints": lambda: [c.title for c in service.manager.checkpoints() if c.error is None],
            "vaes": lambda: service.networks.vaes.choices() if service.networks else ["Automatic", "None"],
            "samplers": lambda: list(service.samplers.names()),
            "schedule types": lambda: list(SCHEDULE_TYPES),
            "upscalers": lambda: list(upscalers),
            "hires upscalers": lambda: [*HIRES_UPSCALERS, *(n for n in upscalers if n not in ("None", *HIRES_UPSCALERS))],
            "styles": lambda: service.styles.names(),
        }
        if what not in lists:
            raise ValueError(f"no list named {what!r}; there are: {', '.join(lists)}")
        return lists[what]()


class StudioScriptRun(StudioChoices):
    """What a script's run() gets (the ScriptRun protocol of backend/extensions/specs.py)."""

    def __init__(self, service: GenerationService, kind: str, job: JobControl) -> None:
        super().__init__(service)
        self.kind = kind
        self.job = job
        self._service = service

    def generate(self, request) -> GenerationResult:
        if getattr(request, "script_name", None):
            raise ValueError("a script cannot run another script")
        return self._service.generate_part(request, self.job)

    def with_changes(self, request, **changes):
        data = {name: getattr(request, name) for name in type(request).model_fields}
        for name, value in changes.items():
            if name not in data:
                raise ValueError(f"a request has no field {name!r}")
            data[name] = value
        return type(request).model_validate(data, context=self._service.request_context)

    def progress(self, done: int, total: int, text: str = "") -> None:
        self.job.begin_part(done, total, text)

    @property
    def interrupted(self) -> bool:
        return self.job.interrupted

    def save_grid(self, image: Image.Image, infotext: str) -> Path | None:
        return self._service.save_grid(image, infotext, self.kind)

    def result(self, images: list[Image.Image], infotexts: list[str], seeds: list[int], *, info: dict | None = None,
               warnings: Sequence[str] = (), interrupted: bool = False, paths: Sequence[Any] = ()) -> GenerationResult:
        return GenerationResult(images=list(images), infotexts=list(infotexts), seeds=list(seeds),
                                paths=[Path(p) for p in paths], info=dict(info or {}), interrupted=interrupted,
                                warnings=list(warnings))


def _sd_upscale(run: StudioScriptRun, request, args: dict[str, Any]) -> GenerationResult:
    upscaler = args.get("upscaler_index", "None")
    if isinstance(upscaler, int) or str(upscaler).isdigit():  # A1111 sends the index into its upscaler list
        names = run.choices("upscalers")
        index = int(upscaler)
        if not 0 <= index < len(names):
            raise ValueError(f"upscaler index {index} is not one of the {len(names)} upscalers")
        upscaler = names[index]
    return run.generate(run.with_changes(request, sd_upscale={
        "enabled": True, "upscaler": upscaler, "scale_factor": float(args.get("scale_factor", 2.0)),
        "overlap": int(args.get("overlap", 64))}))


SD_UPSCALE_SCRIPT = Script(
    title="SD upscale", run=_sd_upscale, txt2img=False, args=(
        Arg("info", "Will upscale the image by the selected scale factor; use width and height sliders to set "
                    "tile size", kind="text", default=""),
        Arg("overlap", "Tile overlap", kind="slider", default=64, minimum=0, maximum=256, step=16),
        Arg("upscaler_index", "Upscaler", kind="dropdown", default="None", choices=lambda s: s.choices("upscalers")),
        Arg("scale_factor", "Scale Factor", kind="slider", default=2.0, minimum=1.0, maximum=4.0, step=0.05),
    ))

BUILTIN_SCRIPTS: tuple[Script, ...] = (SD_UPSCALE_SCRIPT,)


def save_grid_image(image: Image.Image, infotext: str, directory: Path, fmt: str) -> Path:
    """grid-NNNNN.<fmt>, numbered on from what the folder holds, with the grid's infotext."""
    tags = FilenameTags(width=image.width, height=image.height, job_timestamp=datetime.now())
    return save_image(image, directory, infotext=infotext, fmt=fmt, filename_pattern="grid", tags=tags)
