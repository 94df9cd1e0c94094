"""The opt-in compiled UNet (--compile): the studio's backend wrapper counts each compilation, so these
tests see exactly when torch.compile traced the tiny UNet again. The tracing, guards and recompiles are
torch's own; the backend here is torch's "eager" (the traced graph run as is), which keeps the tests to
seconds: inductor's C++ build takes about a minute for the tiny UNet on two cores (tests/bench.py measures
the real one)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from tests.fixtures.tiny_networks import write_kohya_lora

JOB = dict(prompt="a red ball", negative_prompt="blurry", width=64, height=64, steps=3, seed=5,
           save_images=False, checkpoint="sd1.safetensors")


@torch._dynamo.register_backend(name="studio_test_broken")
def _broken_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler on this machine (a test backend)")


def _context(root, checkpoint_dir, compile_backend):
    device = DeviceSettings.from_flags(device="cpu", precision="full", compile=compile_backend)
    return build_app_context(AppPaths(root=root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]), device)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.fixture(scope="module")
def eager(tmp_path_factory, checkpoint_dir):
    return _context(tmp_path_factory.mktemp("eager"), checkpoint_dir, None)


def test_the_flag_names_the_backend_and_settings_say_so():
    assert DeviceSettings.from_flags(device="cpu", compile=True).compile == "inductor"
    assert DeviceSettings.from_flags(device="cpu", compile="aot_eager").compile == "aot_eager"
    assert DeviceSettings.from_flags(device="cpu").compile is None
    assert DeviceSettings.from_flags(device="cpu").describe()["unet compile"] == "off (eager)"
    assert "inductor" in DeviceSettings.from_flags(device="cpu", compile=True).describe()["unet compile"]


def test_compiled_once_no_recompile_on_prompt_seed_or_lora_and_same_pixels(tmp_path, checkpoint_dir, eager):
    ctx = _context(tmp_path, checkpoint_dir, "eager")
    compiler = ctx.manager.compiler
    job = JobControl()
    first = ctx.service.txt2img(Txt2ImgRequest(**JOB), job=job)
    assert compiler.compilations >= 1 and not compiler.failures
    assert "Compiled the UNet" in job.snapshot().text  # the progress text told the user
    compiled_once = compiler.compilations

    np.testing.assert_array_equal(_pixels(first), _pixels(eager.service.txt2img(Txt2ImgRequest(**JOB))))
    ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "prompt": "a blue cube on a table", "seed": 99}))
    assert compiler.compilations == compiled_once  # another prompt and seed: same shapes, no recompile

    folder = ctx.networks.loras.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(ctx.manager.load("sd1.safetensors").pipe, folder / "ink.safetensors", seed=1)
    ctx.networks.refresh()
    with_lora = ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "prompt": "a red ball <lora:ink:1>"}))
    assert compiler.compilations == compiled_once  # LoRA deltas go into the weights in place
    assert not np.array_equal(_pixels(with_lora), _pixels(first))  # ...and the compiled UNet uses them
    np.testing.assert_array_equal(_pixels(ctx.service.txt2img(Txt2ImgRequest(**JOB))), _pixels(first))

    ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "width": 96}))
    assert compiler.compilations > compiled_once  # a new size is a new shape: compiled once more
    at_two_sizes = compiler.compilations
    ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "width": 96, "seed": 7}))
    assert compiler.compilations == at_two_sizes  # ...and cached


def test_a_failing_compiler_falls_back_to_eager_with_a_message(tmp_path, checkpoint_dir, eager, caplog):
    ctx = _context(tmp_path, checkpoint_dir, "studio_test_broken")
    job = JobControl()
    with caplog.at_level("WARNING"):
        result = ctx.service.txt2img(Txt2ImgRequest(**JOB), job=job)
    failures = ctx.manager.compiler.failures
    assert failures and all("no C++ compiler" in f for f in failures)
    assert "runs eagerly" in caplog.text and "running it eagerly" in job.snapshot().text
    np.testing.assert_array_equal(_pixels(result), _pixels(eager.service.txt2img(Txt2ImgRequest(**JOB))))
