"""The built-in X/Y/Z plot (A1111 1.10's script of that name), written against the plugin API only.

One job per cell, each through the studio's own service (its queue turn, saving, infotext); the grid is
drawn here and saved where the studio saves grids. Its inputs keep A1111's names and order, so an
A1111 client's positional script_args (axis types as indices) work unchanged.
"""
from __future__ import annotations

from backend.extensions.api import Arg, Script

from .answer import build_answer
from .axes import axis_by_label, supported_labels
from .plot import TITLE, flag, plan_axes, run_cells


def run_plot(run, request, args: dict):
    plans, options, base = plan_axes(run, request, args)
    cells = run_cells(run, base, plans, options)
    return build_answer(run, base, plans, options, cells)


def listed(axis_type) -> str | None:
    """The studio list an axis's values come from (samplers, checkpoints...), None for typed values."""
    axis = axis_by_label(axis_type)
    return axis.choices if axis is not None else None


# As A1111's select_axis: an axis with a list shows the dropdown of that list, unless "Use text inputs
# instead of dropdowns" is ticked; any other axis shows the text box.
def axis_values(studio, axis_type, csv_mode) -> list[str]:
    what = listed(axis_type)
    return studio.choices(what) if what else []


def dropdown_shown(studio, axis_type, csv_mode) -> bool:
    return listed(axis_type) is not None and not flag(csv_mode)


def text_shown(studio, axis_type, csv_mode) -> bool:
    return not dropdown_shown(studio, axis_type, csv_mode)


def _axis_args(letter: str) -> tuple[Arg, ...]:
    name = letter.lower()
    follows = (f"{name}_type", "csv_mode")
    return (Arg(f"{name}_type", f"{letter} type", kind="dropdown", default="Nothing", choices=supported_labels()),
            Arg(f"{name}_values", f"{letter} values", kind="text", default="", depends_on=follows,
                visible=text_shown),
            Arg(f"{name}_values_dropdown", f"{letter} values", kind="multiselect", default=(),
                choices=axis_values, depends_on=follows, visible=dropdown_shown))


ARGS: tuple[Arg, ...] = (
    *_axis_args("X"), *_axis_args("Y"), *_axis_args("Z"),
    Arg("draw_legend", "Draw legend", kind="checkbox", default=True),
    Arg("include_lone_images", "Include Sub Images", kind="checkbox", default=False),
    Arg("include_sub_grids", "Include Sub Grids", kind="checkbox", default=False),
    Arg("no_fixed_seeds", "Keep -1 for seeds", kind="checkbox", default=False),
    Arg("vary_seeds_x", "Vary seeds for X", kind="checkbox", default=False),
    Arg("vary_seeds_y", "Vary seeds for Y", kind="checkbox", default=False),
    Arg("vary_seeds_z", "Vary seeds for Z", kind="checkbox", default=False),
    Arg("margin_size", "Grid margins (px)", kind="slider", default=0, minimum=0, maximum=500, step=2),
    Arg("csv_mode", "Use text inputs instead of dropdowns", kind="checkbox", default=False),
)

SCRIPT = Script(title=TITLE, run=run_plot, args=ARGS)


def register(api) -> None:
    api.add_script(SCRIPT)
