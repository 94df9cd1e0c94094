"""IP-Adapter: files in h94's layouts, encoders, pairing, fit, and pixels before/with/after an adapter."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.control.ip_adapter import IpAdapterError, IpAdapterLibrary, IpAdapterUse
from backend.control.ip_adapter.encoder import load_encoder
from backend.generation.sampling import derive_pipeline
from backend.models.types import ModelFamily
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint
from tests.fixtures.tiny_ip_adapters import (image_projection, tiny_encoder, write_adapter, write_encoder_file,
                                             write_encoder_folder, write_hostile_adapter)

WINDOW_STEPS = 3


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from backend.devices import DeviceSettings
    from backend.models.manager import ModelManager

    root = tmp_path_factory.mktemp("ipa")
    write_checkpoint(root / "Stable-diffusion" / "sd1.safetensors", TinySpec("sd1"), seed=0)
    # The model manager alone (the app context also builds the control library that will own this one).
    manager = ModelManager([root / "Stable-diffusion"], DeviceSettings.from_flags(device="cpu", precision="full"), builtin=[])
    loaded = manager.load("sd1.safetensors")
    unet = loaded.pipe.unet
    ipa, cn, clip = root / "models" / "ipadapter", root / "models" / "ControlNet", root / "models" / "clip_vision"
    write_adapter(ipa / "ip-adapter_tiny.bin", unet, "plain", seed=0)
    write_adapter(ipa / "ip-adapter_tiny-st.safetensors", unet, "plain", seed=0)  # the same weights, flat
    write_adapter(ipa / "ip-adapter-plus_tiny.safetensors", unet, "plus", seed=1)
    write_adapter(ipa / "ip-adapter-full-face_tiny.bin", unet, "full", seed=2)
    write_adapter(ipa / "ip-adapter_xl-wide.safetensors", unet, "plain", seed=3, cross_dim=2048)
    write_adapter(cn / "ip-adapter_cn.pth", unet, "plain", seed=4)  # A1111-ControlNet users rename to .pth
    torch.save({"not": torch.zeros(2)}, ipa / "notes.bin")
    save_file({"control_model.input_blocks.0.0.weight": torch.zeros(2)}, str(cn / "control_tiny.safetensors"))
    write_encoder_folder(clip / "tiny-vit")
    write_encoder_file(clip / "tiny-vit-single.safetensors")
    library = IpAdapterLibrary([ipa, cn], [clip])
    return loaded, library, root


def reference(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def job(loaded, library=None, units=None, callback=None, batch=1, steps=2):
    """One txt2img pass on a derived pipeline; adapters attached before and restored after."""
    pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), type(loaded.pipe.scheduler).from_config(
        loaded.pipe.scheduler.config))
    attached = library.attach(pipe, units) if units else None
    try:
        extra = attached.pipeline_kwargs(do_cfg=True, batch=batch) if attached else {}
        step = callback(attached) if callback else None
        return pipe(prompt=["a red circle"] * batch, negative_prompt=["blur"] * batch, num_inference_steps=steps,
                    height=64, width=64, guidance_scale=5.0, output_type="pt", callback_on_step_end=step,
                    generator=[torch.Generator().manual_seed(s) for s in range(1, batch + 1)], **extra).images
    finally:
        if attached:
            attached.restore()


def test_fixture_layout_matches_diffusers_converter(studio):
    loaded, _, _ = studio
    for kind in ("plain", "plus", "full"):
        module, h94 = image_projection(kind, 32, seed=0)
        converted = loaded.pipe.unet._convert_ip_adapter_image_proj_to_diffusers(h94, low_cpu_mem_usage=False)
        ours, theirs = module.state_dict(), converted.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_scan_identifies_adapters_and_encoders(studio):
    _, library, root = studio
    files = {f.name: f for f in library.refresh()}
    assert "control_tiny.safetensors" not in files  # a ControlNet in models/ControlNet is not listed
    assert files["ip-adapter_cn.pth"].kind == "plain" and files["ip-adapter_cn.pth"].error is None
    assert "not an IP-Adapter" in files["notes.bin"].error
    plain, plus = files["ip-adapter_tiny.bin"], files["ip-adapter-plus_tiny.safetensors"]
    assert (plain.kind, plain.embed_dim, plain.layers, plain.family) == ("plain", 16, 6, None)
    assert (plus.kind, plus.embed_dim) == ("plus", 32) and files["ip-adapter-full-face_tiny.bin"].kind == "full"
    assert files["ip-adapter_xl-wide.safetensors"].family is ModelFamily.SDXL
    assert plain.title == f"ip-adapter_tiny [{plain.shorthash}]" and len(plain.shorthash) == 8
    for name in (plain.title, "ip-adapter_tiny", "ip-adapter_tiny.bin", "ip-adapter_tiny [0123abcd]"):
        assert library.find(name) is plain
    with pytest.raises(IpAdapterError, match="unknown IP-Adapter"):
        library.find("nope")
    widths = {e.name: (e.hidden_size, e.projection_dim, e.image_size, e.error) for e in library.encoders()}
    assert widths == {"tiny-vit": (32, 16, 32, None), "tiny-vit-single.safetensors": (32, 16, 32, None)}


def test_single_file_encoder_matches_folder(studio, tmp_path):
    _, library, _ = studio
    folder, single = sorted(library.encoders(), key=lambda e: e.name)
    # A pickle with a flattened layout (no "vision_model." prefix) reads the same.
    flat = {k.removeprefix("vision_model."): v for k, v in tiny_encoder().state_dict().items()}
    torch.save(flat, tmp_path / "flat.bin")
    (pickled,) = IpAdapterLibrary([], [tmp_path]).encoders()
    assert (pickled.hidden_size, pickled.projection_dim, pickled.error) == (32, 16, None)
    pixels = torch.randn(1, 3, 32, 32)
    a, b, c = (load_encoder(e, "cpu", torch.float32) for e in (folder, single, pickled))
    assert torch.equal(a(pixels).image_embeds, b(pixels).image_embeds)
    assert torch.equal(a(pixels).image_embeds, c(pixels).image_embeds)


def test_pixels_weight_reference_and_exact_restore(studio):
    loaded, library, _ = studio
    unet = loaded.pipe.unet
    processors = dict(unet.attn_processors)
    plain_before = job(loaded, batch=2)
    zero = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", [reference(0)], weight=0.0)], batch=2)
    one = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", [reference(0)])], batch=2)
    other = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", [reference(1)])], batch=2)
    flat = job(loaded, library, [IpAdapterUse("ip-adapter_tiny-st", [reference(0)])], batch=2)
    plain_after = job(loaded, batch=2)
    assert torch.equal(zero, plain_before)  # weight 0 skips the adapter exactly
    assert not torch.equal(one, plain_before) and not torch.equal(one, other)
    assert torch.equal(flat, one)  # .bin and flat .safetensors of the same weights
    assert torch.equal(plain_after, plain_before)
    assert all(unet.attn_processors[k] is v for k, v in processors.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert "encoder_hid_proj" not in unet._modules


def test_plus_full_and_several_adapters(studio):
    loaded, library, _ = studio
    images = [reference(0)]
    plain = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", images)])
    plus = job(loaded, library, [IpAdapterUse("ip-adapter-plus_tiny", images)])
    full = job(loaded, library, [IpAdapterUse("ip-adapter-full-face_tiny", images)])
    both = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", images), IpAdapterUse("ip-adapter-plus_tiny", images)])
    half = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", images),
                                 IpAdapterUse("ip-adapter-plus_tiny", images, weight=0.0)])
    assert len({bytes(t.numpy()) for t in (plain, plus, full, both)}) == 4
    assert torch.equal(half, plain)  # a second adapter at weight 0 leaves the first one's picture
    assert all(torch.isfinite(t).all() for t in (plus, full, both))


def test_start_end_window_follows_the_step_callback(studio):
    loaded, library, _ = studio
    unit = IpAdapterUse("ip-adapter_tiny", [reference(0)], weight=0.7, start=0.4, end=0.7)
    seen = []

    def callback(attached):
        def step(pipe, i, t, kwargs):
            attached.apply_step(pipe, (i + 1) / WINDOW_STEPS)
            seen.append(next(p.scale[0] for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")))
            return kwargs
        return step

    windowed = job(loaded, library, [unit], callback=callback, steps=WINDOW_STEPS)
    full = job(loaded, library, [IpAdapterUse("ip-adapter_tiny", [reference(0)], weight=0.7)], steps=WINDOW_STEPS)
    pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), loaded.pipe.scheduler)
    with library.attach(pipe, [unit, IpAdapterUse("ip-adapter-plus_tiny", [reference(0)])]) as attached:
        assert [attached.scales_at(f) for f in (0.0, 0.39, 0.4, 0.7, 0.71, 1.0)] == [
            [0.0, 1.0], [0.0, 1.0], [0.7, 1.0], [0.7, 1.0], [0.0, 1.0], [0.0, 1.0]]
        ip_procs = [p for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
        assert all(p.scale == [0.0, 1.0] for p in ip_procs)  # attach applied fraction 0
    # Set after steps 1, 2, 3 (1/3, 2/3, all done): only step 3 (2/3 done before it) is inside 0.4..0.7.
    assert seen == [0.0, 0.7, 0.0]
    assert not torch.equal(windowed, full)


def test_reference_image_encoded_once(studio):
    loaded, _, root = studio
    library = IpAdapterLibrary([root / "models" / "ipadapter"], [root / "models" / "clip_vision"])
    encoder = library._encoder(library.find_encoder(library.find("ip-adapter_tiny")))
    calls = []
    handle = encoder.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        image = reference(3)
        pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), loaded.pipe.scheduler)
        for _ in range(2):
            library.attach(pipe, [IpAdapterUse("ip-adapter_tiny", [image, image.copy()])]).restore()
        assert calls == [1]  # the copy has the same pixels; plain adapters' negative is zeros, not an encoding
        assert len(library._embeddings) == 2  # the image and the (zeros) negative
        library.unload()
        assert len(library._embeddings) == len(library._loaded_encoders) == len(library._states) == 0
    finally:
        handle.remove()


def test_unload_ip_adapter_does_not_restore_the_same_processors(studio):
    """diffusers 0.42's unload installs fresh processors: new objects, and AttnProcessor2_0 on every attn2
    whatever was there before (here the classic AttnProcessor, as a custom processor would be)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    loaded, library, _ = studio
    pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), loaded.pipe.scheduler)
    original = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(AttnProcessor())
    before = dict(pipe.unet.attn_processors)
    attached = None
    try:
        attached = library.attach(pipe, [IpAdapterUse("ip-adapter_tiny", [reference(0)])])
        pipe.unload_ip_adapter()
        after = dict(pipe.unet.attn_processors)
        assert not any(after[k] is v for k, v in before.items())
        assert {type(after[k]) for k in after if k.endswith("attn2.processor")} == {AttnProcessor2_0}
        assert {type(after[k]) for k in after if k.endswith("attn1.processor")} == {AttnProcessor}
        assert "encoder_hid_proj" in pipe.unet._modules  # left as a None submodule, not the plain attribute
        attached.restore()
        assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())
        assert "encoder_hid_proj" not in pipe.unet._modules
    finally:
        if attached:
            attached.restore()
        pipe.unet.set_attn_processor(dict(original))


def test_errors_before_anything_runs(studio, tmp_path):
    loaded, _, root = studio
    pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), loaded.pipe.scheduler)
    processors = dict(pipe.unet.attn_processors)
    empty = tmp_path / "clip_vision"
    empty.mkdir()
    marker = tmp_path / "pwned"
    write_hostile_adapter(tmp_path / "ipadapter" / "ip-adapter_evil.bin", marker)
    library = IpAdapterLibrary([root / "models" / "ipadapter", tmp_path / "ipadapter"], [empty])
    with pytest.raises(IpAdapterError, match=f"16-wide image embeddings.*{re.escape(str(empty))}"):
        library.attach(pipe, [IpAdapterUse("ip-adapter_tiny", [reference(0)])])
    evil = library.find("ip-adapter_evil")
    assert "refused" in evil.error and not marker.exists()
    with pytest.raises(IpAdapterError, match="refused"):
        library.attach(pipe, [IpAdapterUse("ip-adapter_evil", [reference(0)])])
    paired = IpAdapterLibrary([root / "models" / "ipadapter"], [root / "models" / "clip_vision"])
    with pytest.raises(IpAdapterError, match="made for SDXL.*loaded model is SD1.x"):
        paired.attach(pipe, [IpAdapterUse("ip-adapter_xl-wide", [reference(0)])], family=ModelFamily.SD1)
    with pytest.raises(IpAdapterError, match="start <= end"):
        paired.attach(pipe, [IpAdapterUse("ip-adapter_tiny", [reference(0)], start=0.8, end=0.2)])
    assert not marker.exists()
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
