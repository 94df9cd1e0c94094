"""A1111's "Prompts from file or textbox" script: one job per non-empty line of the text box.

A plain line is the prompt; a line starting with `--` sets fields of its job (cmdargs.py). With a prompt
typed in the UI, a line's prompt (and negative prompt) is put at the start or the end of it ("Insert
prompts at the"), joined by a space, as A1111 1.10 does; with none typed, the line's replaces it.

Seeds as A1111: "Iterate seed every line" gives line k the seed + k x (batch size x batch count) of the
UI's request; "Use same random seed for all lines" picks one random seed for all lines when the seed is
-1; with neither, a -1 seed stays random per line. A line's own --seed wins for that line.
"""
from __future__ import annotations

import random

from backend.extensions.api import Arg, Script

from .cmdargs import read_line, request_changes

TITLE = "Prompts from file or textbox"


def _combined(line_text: str, typed: str, position: str) -> str:
    if not (line_text and typed):
        return line_text or typed
    return f"{line_text} {typed}" if position == "start" else f"{typed} {line_text}"


def plan_jobs(run, request, args: dict) -> tuple[list, list[str]]:
    """(one validated request per line, warnings); every line is read before any job runs, so a bad
    line 5 is refused before lines 1-4 have taken their turns."""
    position = str(args.get("prompt_position") or "start").lower()
    if position not in ("start", "end"):
        raise ValueError(f"{TITLE}: prompt_position must be 'start' or 'end', got {position!r}")
    lines = [line.strip() for line in str(args.get("prompt_txt") or "").splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line]
    if not numbered:
        raise ValueError(f"{TITLE}: the list of prompt inputs is empty")
    iterate, same_seed = bool(args.get("checkbox_iterate")), bool(args.get("checkbox_iterate_batch"))
    seed = request.seed
    if (iterate or same_seed) and seed == -1:
        seed = random.randrange(4294967294)
    samplers = run.choices("samplers")
    jobs, warnings = [], []
    for n, line in numbered:
        where = f"line {n}"
        tags = read_line(line, where)
        changes, line_warnings = request_changes(tags, samplers, where)
        warnings += line_warnings
        changes.setdefault("seed", seed)
        for field in ("prompt", "negative_prompt"):
            if field in changes:
                changes[field] = _combined(str(changes[field]), getattr(request, field), position)
        try:
            jobs.append(run.with_changes(request, **changes))
        except ValueError as err:
            raise ValueError(f"{where} ({line!r}): {err}") from None
        if iterate:  # as A1111: by the UI's batch, whatever the line's own batch is
            seed += request.batch_size * request.n_iter
    return jobs, warnings


def run_script(run, request, args: dict):
    jobs, warnings = plan_jobs(run, request, args)
    images, infotexts, seeds, prompts, negatives, subseeds = [], [], [], [], [], []
    first_info: dict = {}
    interrupted = False
    for index, job in enumerate(jobs):
        if run.interrupted:
            interrupted = True
            break
        run.progress(index, len(jobs), f"Line {index + 1} of {len(jobs)}")
        result = run.generate(job)
        images += result.images
        infotexts += result.infotexts
        seeds += result.seeds
        info = result.info or {}
        first_info = first_info or dict(info)
        prompts += info.get("all_prompts", [job.prompt] * len(result.images))
        negatives += info.get("all_negative_prompts", [job.negative_prompt] * len(result.images))
        subseeds += info.get("all_subseeds", [])
        warnings += [w for w in result.warnings if w not in warnings]
        if result.interrupted:
            interrupted = True
            break
    info = {**first_info, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
            "all_prompts": prompts, "all_negative_prompts": negatives, "all_seeds": seeds,
            "all_subseeds": subseeds, "infotexts": infotexts, "index_of_first_image": 0}
    if seeds:
        info["seed"] = seeds[0]
    return run.result(images, infotexts, seeds, info=info, warnings=warnings, interrupted=interrupted)


SCRIPT = Script(title=TITLE, run=run_script, args=(
    Arg("checkbox_iterate", "Iterate seed every line", kind="checkbox", default=False),
    Arg("checkbox_iterate_batch", "Use same random seed for all lines", kind="checkbox", default=False),
    Arg("prompt_position", "Insert prompts at the", kind="dropdown", default="start", choices=("start", "end")),
    Arg("prompt_txt", "List of prompt inputs", kind="textarea", default=""),
))


def register(api) -> None:
    api.add_script(SCRIPT)
