"""The model manager: detection, offline loading, hashing, hot swap, and bad files."""
from __future__ import annotations

import gc
import hashlib
import os
import pickle
import weakref
from pathlib import Path

import psutil
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import save_file

from backend.devices import DeviceSettings
from backend.models.errors import CheckpointLoadError, UnknownCheckpointError
from backend.models.manager import ModelManager
from backend.models.types import ModelFamily
from tests.fixtures.tiny_checkpoints import TinySpec, build_components, write_checkpoint

CPU = DeviceSettings.from_flags(device="cpu", precision="full")


def test_each_family_is_detected_from_keys_and_shapes(checkpoint_dir):
    manager = ModelManager([checkpoint_dir], CPU)
    found = {e.name: e.variant.label for e in manager.checkpoints()}
    assert found["sd1.safetensors"] == "SD1.x"
    assert found["sd1-inpainting.safetensors"] == "SD1.x inpainting"
    assert found["sd2-v.safetensors"] == "SD2.x v"
    assert found["sdxl.safetensors"] == "SDXL"


@pytest.mark.parametrize("spec,label", [
    (TinySpec("sdxl", sdxl_layout="ssd-1b"), "SDXL (SSD-1B)"),
    (TinySpec("sdxl-refiner"), "SDXL refiner"),
    (TinySpec("sd2"), "SD2.x eps"),
])
def test_variants_load_with_every_weight_in_place(tmp_path, spec, label):
    write_checkpoint(tmp_path / "m.safetensors", spec, seed=3)
    manager = ModelManager([tmp_path], CPU)
    loaded = manager.load("m")
    assert loaded.variant.label == label
    expected = build_components(spec, seed=3)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if part in expected:
            ours = getattr(loaded.pipe, part).state_dict()
            for key, value in expected[part].state_dict().items():
                if not key.endswith("position_ids"):
                    assert torch.equal(ours[key], value), f"{part}.{key} differs"


def test_loaded_weights_equal_the_file(tiny_sd1_file, checkpoint_dir):
    manager = ModelManager([checkpoint_dir], CPU)
    loaded = manager.load("sd1")
    expected = build_components(TinySpec("sd1"), seed=0)
    for part in ("unet", "vae", "text_encoder"):
        theirs = expected[part].state_dict()
        ours = getattr(loaded.pipe, part).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in theirs.items() if not k.endswith("position_ids"))
    assert loaded.pipe.scheduler.config.prediction_type == "epsilon"


def test_v_prediction_comes_from_the_sidecar_yaml(checkpoint_dir):
    loaded = ModelManager([checkpoint_dir], CPU).load("sd2-v.safetensors")
    assert loaded.variant.family is ModelFamily.SD2
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"


def test_marker_keys_say_v_prediction_and_zero_terminal_snr(tmp_path):
    """Files trained on v-prediction may carry empty "v_pred" / "ztsnr" tensors (as ComfyUI and Forge read them):
    the sampler then predicts v and starts from pure noise, at t=999."""
    from safetensors.torch import load_file

    from backend.generation.samplers import make_scheduler

    path = write_checkpoint(tmp_path / "vpred.safetensors", TinySpec("sd1"), seed=1)
    save_file(load_file(path) | {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(path))
    manager = ModelManager([tmp_path], CPU)
    assert manager.checkpoints()[0].variant.label == "SD1.x v"  # known from the header, before loading
    loaded = manager.load("vpred")
    assert loaded.variant.prediction_type == "v_prediction" and loaded.variant.zero_terminal_snr
    for sampler in ("Euler a", "Euler", "DPM++ 2M"):
        scheduler = make_scheduler(sampler, "Automatic", loaded.pipe.scheduler.config, loaded.variant.prediction_type)
        scheduler.set_timesteps(20)
        assert scheduler.config.prediction_type == "v_prediction"
        assert int(scheduler.timesteps[0]) == 999, sampler
        assert float(scheduler.alphas_cumprod[-1]) < 1e-6, sampler  # no signal left at the last step
    plain = ModelManager([tmp_path / "none"], CPU, builtin=[write_checkpoint(tmp_path / "eps.safetensors",
                                                                              TinySpec("sd1"), seed=1)])
    eps = plain.load("eps").variant
    assert eps.prediction_type == "epsilon" and not eps.zero_terminal_snr


def test_hash_is_sha256_prefix_and_title_names_it(tiny_sd1_file, checkpoint_dir, tmp_path):
    from backend.models.hashing import HashCache

    manager = ModelManager([checkpoint_dir], CPU, hash_cache=HashCache(tmp_path / "cache.json"))
    info = manager.load("sd1.safetensors").info
    digest = hashlib.sha256(tiny_sd1_file.read_bytes()).hexdigest()
    assert info.sha256 == digest
    assert info.title == f"sd1.safetensors [{digest[:10]}]"
    assert manager.find(info.title) is info and manager.find(digest[:10]) is info
    # A second manager reads the hash from the cache file without hashing again.
    again = ModelManager([checkpoint_dir], CPU, hash_cache=HashCache(tmp_path / "cache.json"))
    assert again.find("sd1").sha256 == digest


def test_find_accepts_a1111_spellings_and_rejects_unknown(checkpoint_dir):
    manager = ModelManager([checkpoint_dir], CPU)
    assert manager.find("sdxl").name == "sdxl.safetensors"
    assert manager.find("sdxl.safetensors [0123456789]").name == "sdxl.safetensors"
    with pytest.raises(UnknownCheckpointError, match="nope"):
        manager.find("nope")


def test_cached_swap_returns_the_same_pipeline_without_reading(checkpoint_dir):
    manager = ModelManager([checkpoint_dir], CPU, cache_size=2)
    first = manager.load("sd1")
    second = manager.load("sd1-other")
    (checkpoint_dir / "sd1.safetensors").stat()  # the file stays, but the cache must answer
    assert manager.load("sd1") is first and manager.load("sd1-other") is second
    assert [l.info.name for l in manager.loaded()] == ["sd1.safetensors", "sd1-other.safetensors"]


def test_evicted_models_are_released(tmp_path):
    for seed in (1, 2):
        write_checkpoint(tmp_path / f"m{seed}.safetensors", TinySpec("sd1", width=4), seed=seed)
    manager = ModelManager([tmp_path], CPU, cache_size=1)
    unet_ref = weakref.ref(manager.load("m1").pipe.unet)
    manager.load("m2")
    gc.collect()
    assert unet_ref() is None, "the evicted UNet is still referenced somewhere"
    process = psutil.Process()
    manager.load("m1")
    manager.load("m2")
    gc.collect()
    baseline = process.memory_info().rss
    for _ in range(6):  # 12 loads: a model kept per load would be far above 10%
        manager.load("m1")
        manager.load("m2")
    gc.collect()
    assert len(manager.loaded()) == 1
    assert process.memory_info().rss < baseline * 1.10


def test_ckpt_and_misnamed_files_load_by_content(tmp_path):
    write_checkpoint(tmp_path / "old.ckpt", TinySpec("sd1"), seed=0, fmt="ckpt")
    write_checkpoint(tmp_path / "really-safetensors.ckpt", TinySpec("sd1"), seed=0)
    manager = ModelManager([tmp_path], CPU)
    a = manager.load("old.ckpt").pipe.unet.state_dict()
    b = manager.load("really-safetensors.ckpt").pipe.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _RunsCode:
    """Unpickling this calls os.system, as a malicious checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(folder: Path, good: Path) -> dict[str, str]:
    """name -> words the error must contain."""
    (folder / "empty.safetensors").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "page.safetensors").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    (folder / "huge-header.safetensors").write_bytes((2**40).to_bytes(8, "little") + b'{"a":1}' + b"\0" * 64)
    torch.save({"state_dict": {"x": _RunsCode(folder / "PWNED")}}, folder / "evil.ckpt")
    (folder / "legacy-evil.ckpt").write_bytes(pickle.dumps(_RunsCode(folder / "PWNED"), protocol=2))
    (folder / "truncated.ckpt").write_bytes((folder / "evil.ckpt").read_bytes()[:40])
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(folder / "a-lora.safetensors"))
    return {"empty.safetensors": "empty", "truncated.safetensors": "truncated", "page.safetensors": "web page",
            "huge-header.safetensors": "header", "evil.ckpt": "No code from the file was run",
            "legacy-evil.ckpt": "No code from the file was run", "truncated.ckpt": "damaged",
            "a-lora.safetensors": "LoRA"}


def test_bad_files_give_clear_errors_and_the_old_model_keeps_serving(tmp_path, tiny_sd1_file):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    good = folder / "good.safetensors"
    good.write_bytes(tiny_sd1_file.read_bytes())
    expected = _bad_files(folder, good)
    manager = ModelManager([folder], CPU)
    listed = {e.name: e for e in manager.checkpoints()}
    assert listed["a-lora.safetensors"].error and "models/Lora" in listed["a-lora.safetensors"].error
    serving = manager.load("good")
    for name, words in expected.items():
        with pytest.raises(CheckpointLoadError) as caught:
            manager.load(name)
        assert words in str(caught.value), f"{name}: {caught.value}"
        assert manager.loaded() == [serving], f"{name} disturbed the loaded model"
    assert not (folder / "PWNED").exists(), "code from a pickle ran"
    assert manager.load("good") is serving


def test_a_scan_never_crashes_on_strange_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 3)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.ckpt").write_bytes(b"garbage!" * 10)
    entries = {e.name: e for e in ModelManager([tmp_path], CPU).checkpoints()}
    assert set(entries) == {"x.safetensors", "sub/y.ckpt"}
    assert "unknown file format" in entries["x.safetensors"].error


def test_diffusers_folder_loads_offline_and_generates_like_the_single_file(tmp_path, checkpoint_dir):
    """A diffusers folder (model_index.json) is listed and loads with local files only."""
    single = ModelManager([checkpoint_dir], CPU).load("sd1")
    folder = tmp_path / "models" / "tiny-diffusers"
    # As diffusers writes it: the studio's VAE subclass (own precision) saved as diffusers' AutoencoderKL.
    vae = AutoencoderKL.from_config(single.pipe.vae.config)
    vae.load_state_dict(single.pipe.vae.state_dict())
    StableDiffusionPipeline(**{**single.pipe.components, "vae": vae}).save_pretrained(folder)
    manager = ModelManager([tmp_path / "models"], CPU)
    assert [e.name for e in manager.checkpoints()] == ["tiny-diffusers"]
    loaded = manager.load("tiny-diffusers")
    assert loaded.variant.family is ModelFamily.SD1 and not loaded.variant.inpainting
    ours, theirs = loaded.pipe.unet.state_dict(), single.pipe.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
