"""The plot's answer, as A1111's: the grid first (the Z sub-grids side by side), then the sub-grids when
asked, then every cell's pictures when asked; the grid saved where the studio saves grids."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .grid import draw_grid, draw_z_grid, with_params
from .plot import AxisPlan, Cells, Options, cell_text, first_images, grid_params


@dataclass
class Answer:
    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    paths: list[Any] = field(default_factory=list)  # None where a picture was not saved

    def add(self, image, infotext: str, seed, prompt: str, negative: str, path=None) -> None:
        self.images.append(image)
        self.infotexts.append(infotext)
        self.seeds.append(seed if seed is not None else -1)
        self.prompts.append(prompt)
        self.negatives.append(negative)
        self.paths.append(path)


def _labels(plan: AxisPlan, options: Options) -> list[str]:
    return plan.labels if options.draw_legend else [""] * len(plan.values)


def _prompts(result, index: int = 0) -> tuple[str, str]:
    info = getattr(result, "info", {}) or {}
    prompts, negatives = info.get("all_prompts") or [""], info.get("all_negative_prompts") or [""]
    return (prompts[index] if index < len(prompts) else prompts[0],
            negatives[index] if index < len(negatives) else negatives[0])


def _grids(plans: list[AxisPlan], options: Options, cells: Cells) -> tuple[Any, list]:
    nx, ny, nz = (len(p.values) for p in plans)
    per_grid = nx * ny
    firsts = first_images(cells, per_grid * nz)  # A1111 puts each cell's first picture in the grid
    x_labels, y_labels, z_labels = (_labels(p, options) for p in plans)
    subs = [draw_grid(firsts[iz * per_grid:(iz + 1) * per_grid], nx, x_labels, y_labels, options.margin)
            for iz in range(nz)]
    return draw_z_grid(subs, z_labels), subs


def _add_grid(answer: Answer, run, request, grid, cells: Cells, index: int, params: dict) -> None:
    text, seed = cell_text(cells, index)
    infotext = with_params(text, params)
    path = run.save_grid(grid, infotext) if request.save_images else None
    prompt, negative = _prompts(cells.results.get(index) or next(iter(cells.results.values())))
    answer.add(grid, infotext, seed, prompt, negative, path)


def _add_lone_images(answer: Answer, cells: Cells) -> None:
    for index in sorted(cells.results):
        result = cells.results[index]
        paths = list(getattr(result, "paths", []) or [])
        for k, image in enumerate(result.images):
            prompt, negative = _prompts(result, k)
            answer.add(image, result.infotexts[k] if k < len(result.infotexts) else "",
                       result.seeds[k] if k < len(result.seeds) else None, prompt, negative,
                       paths[k] if k < len(paths) else None)


def _info(answer: Answer, cells: Cells, grids: int) -> dict:
    first = cells.results[min(cells.results)]
    info = dict(getattr(first, "info", {}) or {})
    info.update(infotexts=list(answer.infotexts), all_seeds=list(answer.seeds), seed=answer.seeds[0],
                all_prompts=list(answer.prompts), all_negative_prompts=list(answer.negatives),
                index_of_first_image=grids)
    return info


def _warnings(cells: Cells) -> list[str]:
    seen: dict[str, None] = {}
    for index in sorted(cells.results):
        for warning in getattr(cells.results[index], "warnings", []) or []:
            seen.setdefault(str(warning), None)
    return list(seen)


def build_answer(run, request, plans: list[AxisPlan], options: Options, cells: Cells):
    if not any(result.images for result in cells.results.values()):
        return run.result([], [], [], warnings=_warnings(cells), interrupted=cells.interrupted)
    nx, ny, nz = (len(p.values) for p in plans)
    grid, subs = _grids(plans, options, cells)
    answer = Answer()
    _add_grid(answer, run, request, grid, cells, 0, grid_params(plans, options, with_z=True))
    if options.include_sub_grids and nz > 1:
        for iz, sub in enumerate(subs):
            _add_grid(answer, run, request, sub, cells, iz * nx * ny, grid_params(plans, options, with_z=False))
    grids = len(answer.images)
    if options.include_lone_images:
        _add_lone_images(answer, cells)
    # The result's paths go with its pictures one to one, so they are given only when all were saved.
    paths = answer.paths if all(p is not None for p in answer.paths) else []
    return run.result(answer.images, answer.infotexts, answer.seeds, info=_info(answer, cells, grids),
                      warnings=_warnings(cells), interrupted=cells.interrupted, paths=paths)
