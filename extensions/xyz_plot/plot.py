"""Running a plot: read the three axes, make one job per cell through the studio (costliest axis in the
outer loop), then draw the grid and answer as A1111's X/Y/Z plot does (the grid first)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .axes import Axis, Changes, find_axis
from .checks import check_prompt_axis, resolve_choices
from .values import parse_values, split_csv, to_csv

TITLE = "X/Y/Z plot"
MAX_GRID_MEGAPIXELS = 200  # A1111's img_max_size_mp default: a bigger grid is refused before it starts
SEED_AXES = ("Seed", "Var. seed")


@dataclass
class AxisPlan:
    letter: str  # "X", "Y" or "Z"
    axis: Axis
    text: str  # the values as typed (or the dropdown's, as CSV), for the infotext
    values: list
    shown: list  # what the labels show (the value as given: "sd1", not the checkpoint's full title)

    @property
    def labels(self) -> list[str]:
        return [self.axis.format(v) for v in self.shown]

    @property
    def used(self) -> bool:
        return self.axis.label != "Nothing"


@dataclass
class Options:
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary: tuple[bool, bool, bool] = (False, False, False)
    margin: int = 0
    csv_mode: bool = False


def flag(value: Any) -> bool:
    """A checkbox value; API clients may send "false" or 0."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def read_options(args: dict) -> Options:
    try:
        margin = int(float(args.get("margin_size") or 0))
    except (TypeError, ValueError):
        raise ValueError(f"margin_size {args.get('margin_size')!r} is not a number of pixels") from None
    return Options(
        draw_legend=flag(args.get("draw_legend", True)), include_lone_images=flag(args.get("include_lone_images")),
        include_sub_grids=flag(args.get("include_sub_grids")), no_fixed_seeds=flag(args.get("no_fixed_seeds")),
        vary=tuple(flag(args.get(f"vary_seeds_{c}")) for c in "xyz"), margin=max(0, min(500, margin)),
        csv_mode=flag(args.get("csv_mode")))


def read_axis(run, request, letter: str, args: dict, options: Options) -> AxisPlan:
    name = letter.lower()
    axis = find_axis(args.get(f"{name}_type"), run.kind, letter)
    if axis.label == "Nothing":
        return AxisPlan(letter, axis, "", [None], [None])
    text = args.get(f"{name}_values") or ""
    if isinstance(text, (list, tuple)):  # an API client may send the values as a list
        text = to_csv(text)
    dropdown = args.get(f"{name}_values_dropdown") or []
    dropdown = split_csv(dropdown) if isinstance(dropdown, str) else [str(v).strip() for v in dropdown]
    # A1111 reads the input the page shows: for an axis with a list the dropdown, unless csv_mode. When that
    # one is empty the other is read: A1111's page moves the values across on switching, and API clients
    # often send a list axis's values as text.
    on_page = bool(axis.choices) and not options.csv_mode  # True: the dropdown shows, False: the text box
    use_dropdown = on_page
    if axis.choices and not (dropdown if on_page else split_csv(str(text))):
        use_dropdown = not on_page
    if use_dropdown:
        raw, text = dropdown, to_csv(dropdown)
    else:
        raw = split_csv(str(text))
    try:
        shown = parse_values(axis.kind, raw)
    except ValueError as err:
        raise ValueError(f"{letter} values for {axis.label}: {err}") from None
    if not shown:
        raise ValueError(f"{letter} values: {axis.label} needs at least one value")
    values = resolve_choices(axis, shown, run, letter)
    check_prompt_axis(axis, values, request, letter)
    return AxisPlan(letter, axis, str(text), values, shown)


def fix_seeds(plans: list[AxisPlan], options: Options) -> None:
    """A1111's fix_seed for the Seed axes: each -1 becomes a random seed, the same in every cell of its
    column (row, sub-grid), so the grid compares like with like."""
    if options.no_fixed_seeds:
        return
    for plan in plans:
        if plan.axis.label in SEED_AXES:
            plan.values = [random.randrange(4294967294) if v == -1 else v for v in plan.values]
            plan.shown = list(plan.values)


def loop_order(plans: list[AxisPlan]) -> list[tuple[int, int, int]]:
    """(ix, iy, iz) in A1111's order: the costliest axis outermost, then the next; ties leave Z, Y, X."""
    x, y, z = (p.axis.cost for p in plans)
    first, second = 2, 1
    if x > y and x > z:
        first, second = 0, (1 if y > z else 2)
    elif y > x and y > z:
        first, second = 1, (0 if x > z else 2)
    elif z > x and z > y:
        first, second = 2, (0 if x > y else 1)
    third = 3 - first - second
    counts = [len(p.values) for p in plans]
    order = []
    for a in range(counts[first]):
        for b in range(counts[second]):
            for c in range(counts[third]):
                at = [0, 0, 0]
                at[first], at[second], at[third] = a, b, c
                order.append(tuple(at))
    return order


def cell_request(run, base, plans: list[AxisPlan], at: tuple[int, int, int], options: Options):
    changes = Changes(base)
    for plan, index in zip(plans, at):
        plan.axis.apply(changes, plan.values[index], plan.values)
    seed = changes.get("seed")
    if seed != -1 and any(options.vary):  # A1111's "Vary seeds for X/Y/Z": the cell's index is added
        nx = len(plans[0].values) if options.vary[0] else 1
        ny = len(plans[1].values) if options.vary[1] else 1
        offset = (at[0] if options.vary[0] else 0) + (at[1] * nx if options.vary[1] else 0) \
            + (at[2] * nx * ny if options.vary[2] else 0)
        changes.set("seed", (seed + offset) % 2**32)
    return run.with_changes(base, **changes.fields)


def check_size(plans: list[AxisPlan], base) -> None:
    sizes = plans_sizes(plans, base)
    cells = len(plans[0].values) * len(plans[1].values) * len(plans[2].values)
    megapixels = cells * max(w * h for w, h in sizes) / 1_000_000
    if megapixels > MAX_GRID_MEGAPIXELS:
        raise ValueError(f"the grid would be {megapixels:.0f} megapixels ({cells} cells); at most "
                         f"{MAX_GRID_MEGAPIXELS} are allowed: fewer values or a smaller size")


def plans_sizes(plans: list[AxisPlan], base) -> list[tuple[int, int]]:
    for plan in plans:
        if plan.axis.label == "Size":
            return [tuple(int(n) for n in v.split("x")) for v in plan.values]
    return [(base.width, base.height)]


@dataclass
class Cells:
    """What the cells made, by cell index ix + iy * nx + iz * nx * ny (A1111's)."""

    results: dict[int, Any] = field(default_factory=dict)
    interrupted: bool = False


def run_cells(run, base, plans: list[AxisPlan], options: Options) -> Cells:
    nx, ny = len(plans[0].values), len(plans[1].values)
    order = loop_order(plans)
    # Every cell's request is built (and so validated) before the first picture is made.
    requests = [(ix + iy * nx + iz * nx * ny, cell_request(run, base, plans, (ix, iy, iz), options))
                for ix, iy, iz in order]
    cells = Cells()
    for done, (index, request) in enumerate(requests):
        if run.interrupted:
            cells.interrupted = True
            break
        run.progress(done, len(requests), f"{TITLE}: cell {done + 1} of {len(requests)}")
        cells.results[index] = run.generate(request)
        cells.interrupted = cells.interrupted or bool(getattr(cells.results[index], "interrupted", False))
    return cells


def plan_axes(run, request, args: dict) -> tuple[list[AxisPlan], Options, Any]:
    options = read_options(args)
    plans = [read_axis(run, request, letter, args, options) for letter in "XYZ"]
    fix_seeds(plans, options)
    check_size(plans, request)
    base = request
    if not options.no_fixed_seeds:  # one seed for the whole plot, as A1111's fix_seed
        base = run.with_changes(request, **{k: random.randrange(4294967294) for k in ("seed", "subseed")
                                            if getattr(request, k) == -1})
    return plans, options, base


def grid_params(plans: list[AxisPlan], options: Options, with_z: bool) -> dict[str, object]:
    """The entries A1111 adds to a grid's infotext: Script, X Type, X Values (and the fixed seeds)."""
    params: dict[str, object] = {"Script": TITLE}
    for plan in plans if with_z else plans[:2]:
        if plan.used:
            params[f"{plan.letter} Type"] = plan.axis.label
            params[f"{plan.letter} Values"] = plan.text
            if plan.axis.label in SEED_AXES and not options.no_fixed_seeds:
                params[f"Fixed {plan.letter} Values"] = ", ".join(str(v) for v in plan.values)
    return params


def first_images(cells: Cells, count: int) -> list:
    return [cells.results[i].images[0] if i in cells.results and cells.results[i].images else None
            for i in range(count)]


def cell_text(cells: Cells, index: int) -> tuple[str, int | None]:
    """The infotext and seed of a cell's first picture (else of the first cell that has one)."""
    for i in (index, *sorted(cells.results)):
        result = cells.results.get(i)
        if result is not None and result.infotexts:
            return result.infotexts[0], (result.seeds[0] if result.seeds else None)
    return "", None
