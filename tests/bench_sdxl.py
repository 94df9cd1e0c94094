"""The few-step and refiner rows of `python -m tests.bench` (issue 30's speed checks).

few-step: seconds per picture at 4 LCM steps, CFG 1 (one UNet call a step) against 25 Euler a steps,
CFG 7 (two a step, batched), the same model and size. The picture quality of a model not distilled for
LCM is not the point: the row measures what the schedule and CFG 1 cost.

refiner: a job whose last 20 % of steps run on a refiner (switch at 0.8) against the base alone at the
same total steps, both models cached (a warm-up job loads them). The refiner is a second name (hard
link) for the same file, so the UNets cost alike and the ratio is the hand-over's own cost: the
refiner's text encoding and the switch. With --quick: the tiny SDXL base and tiny SDXL refiner fixtures.
"""
from __future__ import annotations

from backend.generation.request import Txt2ImgRequest
from backend.sdxl.refiner import Refiner
from tests.bench_rows import Bench, Row, link_or_copy, side_by_side
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint

FEW_STEPS, MANY_STEPS, SWITCH_AT = 4, 25, 0.8


def row_few_step(b: Bench) -> list[Row]:
    model = b.main
    ctx, _ = b.context(model)
    lcm = Txt2ImgRequest(**b.request(model, steps=FEW_STEPS, cfg_scale=1.0, sampler_name="LCM"))
    euler = Txt2ImgRequest(**b.request(model, steps=MANY_STEPS, cfg_scale=7.0, sampler_name="Euler a"))
    ours, base = side_by_side(lambda: ctx.service.txt2img(lcm), lambda: ctx.service.txt2img(euler), b.repeats)
    return [Row("few-step (LCM, CFG 1)", model.label, str(model.size), f"{FEW_STEPS} vs {MANY_STEPS}", ours, base,
                vs=f"Euler a {MANY_STEPS} steps, CFG 7", note="ours: one UNet call a step")]


def _refiner_pair(b: Bench):
    """(base path, refiner path, label, size, steps) of the row's model pair."""
    if b.args.quick:
        folder = b.work / "tiny-sdxl"
        base = write_checkpoint(folder / "tiny-sdxl.safetensors", TinySpec("sdxl"), seed=3)
        refiner = write_checkpoint(folder / "tiny-sdxl-refiner.safetensors", TinySpec("sdxl-refiner"), seed=7)
        return base, refiner, "tiny SDXL + tiny refiner", 64, 20
    model = b.main
    refiner = link_or_copy(model.path, b.work / "refiner" / f"{model.path.stem}-as-refiner{model.path.suffix}")
    return model.path, refiner, f"{model.label}, itself as refiner", model.size, model.steps


def row_refiner(b: Bench) -> list[Row]:
    base_path, refiner_path, label, size, steps = _refiner_pair(b)
    ctx = b.studio([base_path, refiner_path])
    values = dict(prompt="a red ball on a blue table", negative_prompt="blurry", steps=steps, width=size, height=size,
                  seed=3, sampler_name="Euler a", cfg_scale=7.0, checkpoint=base_path.name, save_images=False)
    refined = Txt2ImgRequest(**values, refiner=Refiner(checkpoint=refiner_path.name, switch_at=SWITCH_AT))
    alone = Txt2ImgRequest(**values)
    try:
        ours, base = side_by_side(lambda: ctx.service.txt2img(refined), lambda: ctx.service.txt2img(alone),
                                  b.repeats)
        cached = len(ctx.manager.loaded())
    finally:
        ctx.manager.unload_all()
    return [Row("refiner hand-over", label, str(size), str(steps), ours, base, vs="base alone, same steps",
                note=f"switch at {SWITCH_AT}; {cached} models cached")]
