"""ControlNet files: the layouts users bring load to the exact weights, are identified by shape, cached, and
hostile or foreign files are listed with a reason and refused without running anything."""
from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import load_file, save_file

from backend.control.models import ControlNetLoadError, ControlNetStore, UnknownControlNetError
from backend.control.models.convert import config_from_ldm
from backend.control.models.scan import identify, strip_prefix
from backend.models import architecture as arch
from backend.models.types import ModelFamily
from tests.fixtures.tiny_checkpoints import TinySpec, build_components
from tests.fixtures.tiny_controlnets import (build_tiny_controlnet, controlnet_to_ldm, write_controlnet,
                                             write_ip_adapter)

FAMILIES = {"sd1": ModelFamily.SD1, "sd2": ModelFamily.SD2, "sdxl": ModelFamily.SDXL}
# (family, layout, fmt, file dtype, fp16 folder variant): every layout, both formats and dtypes, each family
CASES = [
    ("sd1", "ldm", "safetensors", torch.float32, None),
    ("sd1", "ldm", "pth", torch.float16, None),
    ("sd1", "ldm-noprefix", "safetensors", torch.float16, None),
    ("sd1", "ldm-noprefix", "pth", torch.float32, None),
    ("sd1", "diffusers", "safetensors", torch.float32, None),
    ("sd1", "diffusers-folder", "safetensors", torch.float16, "fp16"),
    ("sd1", "diffusers-folder", "pth", torch.float32, None),
    ("sd2", "ldm", "pth", torch.float32, None),
    ("sd2", "ldm-noprefix", "safetensors", torch.float16, None),
    ("sd2", "diffusers-folder", "safetensors", torch.float32, None),
    ("sdxl", "ldm", "safetensors", torch.float16, None),
    ("sdxl", "ldm-noprefix", "pth", torch.float32, None),
    ("sdxl", "diffusers", "pth", torch.float16, None),
    ("sdxl", "diffusers-folder", "safetensors", torch.float32, None),
]


def _case_name(family, layout, fmt, dtype, variant) -> str:
    bits = "16" if dtype == torch.float16 else "32"
    return f"{family}-{layout}-{fmt}-fp{bits}" + ("" if layout == "diffusers-folder" else f".{fmt}")


@lru_cache(maxsize=None)
def reference(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return build_tiny_controlnet(family, seed).state_dict()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads contend badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def layouts_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet")
    for case in CASES:
        family, layout, fmt, dtype, variant = case
        write_controlnet(folder / _case_name(*case), family, 0, layout, dtype, fmt, variant)
    return folder


@pytest.fixture
def sd1_file(tmp_path) -> Path:
    return write_controlnet(tmp_path / "ControlNet" / "control_v11p_sd15_canny.safetensors", "sd1", seed=0)


def _equal(model: ControlNetModel, expected: dict[str, torch.Tensor]) -> list[str]:
    got = model.state_dict()
    assert set(got) == set(expected)
    return [k for k, v in expected.items() if not torch.equal(got[k], v)]


# --------------------------------------------------------------------------- the layout, checked against diffusers


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefix", ["control_model.", ""])
def test_diffusers_converter_maps_written_keys_back(family, prefix):
    controlnet = build_tiny_controlnet(family, 0)
    expected = controlnet.state_dict()
    converted = convert_controlnet_checkpoint(controlnet_to_ldm(controlnet, prefix), dict(controlnet.config))
    # diffusers 0.42 drops SDXL's label_emb (add_embedding); the studio's loader maps it itself.
    dropped = {k for k in expected if k.startswith("add_embedding.")}
    assert bool(dropped) == (family == "sdxl")
    assert set(converted) == set(expected) - dropped
    assert all(torch.equal(converted[k], expected[k]) for k in converted)


def test_from_single_file_reads_written_file_offline(tmp_path):
    for family in ("sd1", "sdxl"):
        config_dir = tmp_path / f"{family}-config"
        build_tiny_controlnet(family, 0).save_pretrained(config_dir)
        path = write_controlnet(tmp_path / f"{family}.safetensors", family, 0, "ldm")
        if family == "sd1":
            model = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True)
            assert _equal(model, reference(family)) == []
        else:  # diffusers 0.42 leaves SDXL's add_embedding on the meta device (the converter drops label_emb)
            with pytest.raises(NotImplementedError, match="meta tensor"):
                ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("case", CASES, ids=lambda c: _case_name(*c))
def test_every_layout_loads_to_the_built_weights(layouts_dir, case):
    family, layout, fmt, dtype, variant = case
    store = ControlNetStore([layouts_dir])
    info, model = store.load(_case_name(*case))
    assert info.family is FAMILIES[family] and info.kind == "controlnet" and info.error is None
    assert model.dtype == torch.float32 and not model.training
    # a file saved in fp16 holds the fp16-rounded weights; loading casts them to the store's dtype exactly
    expected = {k: v.to(dtype).float() for k, v in reference(family).items()}
    assert _equal(model, expected) == []


def test_listing_detects_families_from_shapes(layouts_dir):
    listed = {e.name: e for e in ControlNetStore([layouts_dir]).files()}
    assert sorted(listed) == sorted(_case_name(*c) for c in CASES)
    for case in CASES:
        entry = listed[_case_name(*case)]
        assert (entry.kind, entry.family, entry.error) == ("controlnet", FAMILIES[case[0]], None)


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_controlnet_computes_what_the_built_one_does(tmp_path, family):
    """The config read from shapes (heads, hint encoder, SDXL time embedding) matches, not just the weights."""
    write_controlnet(tmp_path / "cn.pth", family, 0, "ldm", fmt="pth")
    _, model = ControlNetStore([tmp_path], dtype=torch.float32).load("cn")
    built = build_tiny_controlnet(family, 0)
    g = torch.Generator().manual_seed(0)
    sample, hint = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    cross = built.config.cross_attention_dim
    kwargs = dict(encoder_hidden_states=torch.randn(1, 5, cross, generator=g), controlnet_cond=hint, return_dict=False)
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        want_down, want_mid = built(sample, 10, **kwargs)
        got_down, got_mid = model(sample, 10, **kwargs)
    assert want_mid.abs().sum() > 0  # the filled zero convs make the ControlNet matter
    assert torch.equal(got_mid, want_mid) and all(torch.equal(a, b) for a, b in zip(got_down, want_down))


@pytest.mark.parametrize("family", [ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL])
def test_full_size_shapes_give_the_real_config(family):
    """Real-size ControlNets (on the meta device: shapes only) are read back to the config they were made from."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(arch.family_config(family, "unet"))
        real = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        shapes = controlnet_to_ldm(real)
        identity = identify(shapes)
        read = ControlNetModel.from_config(config_from_ldm(strip_prefix(shapes), identity)).config
    assert identity.family is family
    levels = len(real.config.down_block_types)

    def plain(value):  # configs say 1 for [1, 1, 1, 1], and tuples for lists
        if isinstance(value, int) and not isinstance(value, bool):
            return [value] * levels
        return list(value) if isinstance(value, tuple) else value

    for key in ("in_channels", "conditioning_channels", "block_out_channels", "layers_per_block", "down_block_types",
                "cross_attention_dim", "attention_head_dim", "use_linear_projection", "addition_embed_type",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim", "conditioning_embedding_out_channels",
                "transformer_layers_per_block", "mid_block_type"):
        assert plain(read[key]) == plain(real.config[key]), key


def test_casts_to_the_store_dtype(sd1_file):
    _, model = ControlNetStore([sd1_file.parent], dtype=torch.float16).load(sd1_file.name)
    assert model.dtype == torch.float16
    assert _equal(model, {k: v.half() for k, v in reference("sd1").items()}) == []


def test_short_hint_encoder_loads(tmp_path):
    """diffusers' converter assumes the hint encoder's last conv is number 14; other lengths load too."""
    unet = build_components(TinySpec("sd1"), 5)["unet"]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    save_file({k: v.contiguous() for k, v in controlnet_to_ldm(controlnet).items()}, str(tmp_path / "short.safetensors"))
    _, model = ControlNetStore([tmp_path]).load("short")
    assert tuple(model.config.conditioning_embedding_out_channels) == (16, 32)
    assert _equal(model, controlnet.state_dict()) == []


def test_global_pooling_from_sidecar_yaml(tmp_path):
    write_controlnet(tmp_path / "control_v11e_sd15_shuffle.pth", "sd1", 0, "ldm", fmt="pth")
    (tmp_path / "control_v11e_sd15_shuffle.yaml").write_text(
        "model:\n  params:\n    control_stage_config:\n      params:\n        global_average_pooling: True\n")
    _, model = ControlNetStore([tmp_path]).load("control_v11e_sd15_shuffle")
    assert model.config.global_pool_conditions is True


def test_incomplete_or_extra_weights_are_refused_and_listed(tmp_path, sd1_file):
    keys = load_file(str(sd1_file))
    save_file({k: v for k, v in keys.items() if k != "control_model.middle_block_out.0.bias"}, str(tmp_path / "cut.safetensors"))
    save_file(keys | {"control_model.zero_convs.99.0.weight": torch.zeros(1)}, str(tmp_path / "extra.safetensors"))
    store = ControlNetStore([tmp_path])
    for name, reason in (("cut", "incomplete ControlNet: no weights for controlnet_mid_block.bias"),
                         ("extra", "1 weights fit no ControlNet layer (e.g. zero_convs.99.0.weight)")):
        with pytest.raises(ControlNetLoadError, match=re.escape(f"{name}.safetensors: {reason}")):
            store.load(name)
        assert reason in store.find(name).error  # the listing now says why
    assert store.cached() == []


# --------------------------------------------------------------------------- cache and names


def test_second_load_is_cached_and_reads_no_file(tmp_path, sd1_file):
    store = ControlNetStore([sd1_file.parent])
    info, first = store.load("control_v11p_sd15_canny")
    assert store.load_count == 1 and store.last_load_seconds > 0
    sd1_file.unlink()  # a cache hit must not need the file
    again_info, again = store.load(info.title)
    assert again is first and again_info is info and store.load_count == 1
    assert store.cached() == [info.path]


def test_replaced_file_is_read_again(tmp_path, sd1_file):
    store = ControlNetStore([sd1_file.parent])
    _, first = store.load("control_v11p_sd15_canny")
    write_controlnet(sd1_file, "sd1", seed=7)
    store.refresh()
    _, second = store.load("control_v11p_sd15_canny")
    assert second is not first and store.load_count == 2
    assert _equal(second, reference("sd1", 7)) == []


def test_lru_eviction_at_cache_size(tmp_path):
    paths = [write_controlnet(tmp_path / f"cn{i}.safetensors", "sd1", seed=i) for i in range(3)]
    store = ControlNetStore([tmp_path], cache_size=2)
    for name in ("cn0", "cn1", "cn0", "cn2"):  # cn0 used again, so cn1 is the least recently used
        store.load(name)
    assert store.cached() == [paths[0], paths[2]]
    store.cache_size = 1
    assert store.cached() == [paths[2]]
    _, model = store.load("cn0")
    assert store.cached() == [paths[0]] and store.load_count == 4
    assert _equal(model, reference("sd1", 0)) == []


def test_find_by_title_name_stem_and_stale_hash(tmp_path):
    path = write_controlnet(tmp_path / "sub" / "control_v11p_sd15_canny.safetensors", "sd1", 0)
    store = ControlNetStore([tmp_path])
    info = store.files()[0]
    assert info.name == "sub/control_v11p_sd15_canny.safetensors" and info.model_name == "control_v11p_sd15_canny"
    for name in (info.title, info.name, "control_v11p_sd15_canny.safetensors", "control_v11p_sd15_canny",
                 "Control_V11p_SD15_Canny", "control_v11p_sd15_canny [0badf00d]"):
        assert store.find(name).path == path
    with pytest.raises(UnknownControlNetError, match="control_v11f1p_sd15_depth"):
        store.find("control_v11f1p_sd15_depth [cfd03158]")
    write_controlnet(tmp_path / "late.safetensors", "sd1", 0)  # dropped in after the scan: find rescans
    assert store.find("late").name == "late.safetensors"


def test_title_uses_a1111_old_model_hash(sd1_file):
    folder = write_controlnet(sd1_file.parent / "controlnet-canny-sdxl-1.0", "sdxl", 0, "diffusers-folder")
    store = ControlNetStore([sd1_file.parent])
    listed = {e.model_name: e for e in store.files()}
    assert {e.model_name: e for e in store.refresh()} == listed  # unchanged files are not read or hashed again
    assert all(listed[e.model_name] is e for e in store.files())
    for model_name, weights in (("control_v11p_sd15_canny", sd1_file),  # a folder hashes its weights file
                                ("controlnet-canny-sdxl-1.0", folder / "diffusion_pytorch_model.safetensors")):
        data = weights.read_bytes()
        assert len(data) > 0x110000  # the hash window (64 KiB at 1 MiB) lies inside the file
        expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
        assert listed[model_name].title == f"{model_name} [{expected}]"


# --------------------------------------------------------------------------- hostile and foreign files


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, sd1_file, writer):
    marker = tmp_path / "pwned"
    payload = {"control_model.input_hint_block.0.weight": Evil(marker)}
    scanned, swapped = sd1_file.parent / "control_v11p_sd15_evil.pth", sd1_file.parent / "control_v11p_sd15_swap.pth"
    write_controlnet(swapped, "sd1", 0, fmt="pth")  # good at scan time, replaced by the hostile file later

    def write_hostile(path: Path) -> None:
        torch.save(payload, path) if writer == "torch.save" else path.write_bytes(pickle.dumps(payload, protocol=2))

    write_hostile(scanned)
    store = ControlNetStore([sd1_file.parent])
    _, cached_model = store.load("control_v11p_sd15_canny")
    listed = store.find("control_v11p_sd15_evil")
    assert listed.error and "refused" in listed.error and "No code from the file was run" in listed.error
    write_hostile(swapped)
    for name in ("control_v11p_sd15_evil", "control_v11p_sd15_swap"):
        with pytest.raises(ControlNetLoadError, match=f"{name}.pth: refused"):
            store.load(name)
    assert not marker.exists()
    assert store.cached() == [sd1_file] and store.load("control_v11p_sd15_canny")[1] is cached_model


def test_ip_adapters_are_listed_for_routing_not_loaded(tmp_path):
    write_ip_adapter(tmp_path / "ip-adapter_sd15.safetensors", cross_dim=768)
    write_ip_adapter(tmp_path / "ip-adapter_sd15_plus.bin", nested=True)
    write_controlnet(tmp_path / "cn.safetensors", "sd1", 0)
    store = ControlNetStore([tmp_path])
    adapters = store.files(kind="ip-adapter")
    assert [e.name for e in adapters] == ["ip-adapter_sd15.safetensors", "ip-adapter_sd15_plus.bin"]
    assert adapters[0].family is ModelFamily.SD1 and all(e.error is None for e in adapters)
    assert [e.name for e in store.files(kind="controlnet")] == ["cn.safetensors"]
    with pytest.raises(ControlNetLoadError, match="IP-Adapter"):
        store.load("ip-adapter_sd15")


def test_foreign_files_say_what_they_are(tmp_path):
    (tmp_path / "control_v11p_sd15_openpose.pth").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    save_file({"lora_controlnet": torch.zeros(0), "input_hint_block.0.weight": torch.zeros(1)},
              str(tmp_path / "control-lora.safetensors"))
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "config.json").write_text('{"_class_name": "T2IAdapter"}')
    folder = write_controlnet(tmp_path / "canny", "sd1", 0, "diffusers-folder")
    shutil.copy(folder / "config.json", folder / "extra.bin")  # files inside a diffusers folder are its own
    store = ControlNetStore([tmp_path])
    errors = {e.name: e.error for e in store.files()}
    assert sorted(errors) == ["canny", "cfgdir", "control-lora.safetensors", "control_v11p_sd15_openpose.pth",
                              "sd.safetensors"] and errors["canny"] is None
    assert "models/Stable-diffusion" in errors["sd.safetensors"]
    assert "Control-LoRA" in errors["control-lora.safetensors"]
    assert "T2IAdapter" in errors["cfgdir"]
    assert "web page" in errors["control_v11p_sd15_openpose.pth"]
    with pytest.raises(ControlNetLoadError, match="control_v11p_sd15_openpose.pth: this is a web page"):
        store.load("control_v11p_sd15_openpose")
