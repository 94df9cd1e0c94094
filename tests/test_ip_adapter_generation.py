"""IP-Adapter image prompts in real jobs: alone, with a ControlNet unit, in img2img, over the API; exact restore."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.control.units import ControlUnit
from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from tests.fixtures.tiny_controlnets import write_controlnet
from tests.fixtures.tiny_ip_adapters import write_adapter, write_encoder_folder
from tests.test_controlnet_generation import control_picture

SIZE = 64


def reference(colour, size: int = 48) -> Image.Image:
    picture = Image.new("RGB", (size, size), colour)
    picture.paste((255, 255, 255), (10, 10, 30, 30))
    return picture


@pytest.fixture
def ctx(app_context):
    models = app_context.root / "models"
    unet = app_context.manager.load("sd1.safetensors").pipe.unet
    write_adapter(models / "ipadapter" / "ip-adapter_tiny_sd15.bin", unet, "plain", seed=0)
    write_adapter(models / "ControlNet" / "ip-adapter-plus_tiny_sd15.safetensors", unet, "plus", seed=1)
    write_encoder_folder(models / "clip_vision" / "tiny-vit")
    write_controlnet(models / "ControlNet" / "control_tiny_sd15.safetensors", "sd1", seed=1)
    app_context.control.refresh()
    app_context.options.update(live_previews_enable=False)
    return app_context


def ip_unit(**fields) -> ControlUnit:
    values = dict(module="ip-adapter_clip_sd15", model="ip-adapter_tiny_sd15", image=reference((200, 30, 30)))
    values.update(fields)
    return ControlUnit(**values)


def txt2img(ctx, units=(), **fields):
    values = dict(prompt="a red square", steps=4, width=SIZE, height=SIZE, seed=11, sampler_name="Euler",
                  checkpoint="sd1.safetensors", save_images=False, controlnet_units=list(units))
    values.update(fields)
    result = ctx.service.txt2img(Txt2ImgRequest(**values))
    return np.asarray(result.images[0], dtype=np.int16), result


def test_weight_zero_equals_none_and_the_next_plain_job_is_bit_for_bit_the_one_before(ctx):
    unet = ctx.manager.load("sd1.safetensors").pipe.unet
    processors = dict(unet.attn_processors)
    before, _ = txt2img(ctx)
    zero, _ = txt2img(ctx, [ip_unit(weight=0.0)])
    one, result = txt2img(ctx, [ip_unit(weight=1.0)])
    after, _ = txt2img(ctx)
    assert np.array_equal(zero, before)
    assert np.abs(one - before).mean() > 0.5
    assert np.array_equal(after, before)
    assert all(unet.attn_processors[name] is p for name, p in processors.items())
    assert unet.encoder_hid_proj is None
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny_sd15 [' in result.infotexts[0]


def test_reference_images_matter_and_several_are_averaged(ctx):
    red, _ = txt2img(ctx, [ip_unit()])
    blue, _ = txt2img(ctx, [ip_unit(image=reference((20, 40, 220)))])
    both, _ = txt2img(ctx, [ip_unit(more_images=[reference((20, 40, 220))])])
    assert np.abs(red - blue).mean() > 0.5
    assert np.abs(both - red).mean() > 0.1 and np.abs(both - blue).mean() > 0.1


def test_ip_adapter_with_a_controlnet_unit(ctx):
    plain, _ = txt2img(ctx)
    cn = ControlUnit(module="none", model="control_tiny_sd15", image=control_picture())
    only_cn, _ = txt2img(ctx, [cn])
    only_ip, _ = txt2img(ctx, [ip_unit(model="ip-adapter-plus_tiny_sd15")])
    both, result = txt2img(ctx, [cn, ip_unit(model="ip-adapter-plus_tiny_sd15")])
    assert np.abs(both - only_cn).mean() > 0.5 and np.abs(both - only_ip).mean() > 0.5
    assert "ControlNet 0:" in result.infotexts[0] and "ControlNet 1:" in result.infotexts[0]
    after, _ = txt2img(ctx)
    assert np.array_equal(after, plain)


def test_img2img_ip_adapter_takes_the_img2img_picture(ctx):
    fields = dict(prompt="a red square", steps=4, width=SIZE, height=SIZE, seed=11, sampler_name="Euler",
                  checkpoint="sd1.safetensors", save_images=False, init_images=[reference((200, 30, 30), SIZE)],
                  denoising_strength=0.8)
    plain = ctx.service.img2img(Img2ImgRequest(**fields))
    own = ctx.service.img2img(Img2ImgRequest(**fields, controlnet_units=[ip_unit(image=reference((200, 30, 30), SIZE))]))
    taken = ctx.service.img2img(Img2ImgRequest(**fields, controlnet_units=[ip_unit(image=None)]))
    assert np.array_equal(np.asarray(taken.images[0]), np.asarray(own.images[0]))
    assert not np.array_equal(np.asarray(taken.images[0]), np.asarray(plain.images[0]))


def test_hires_fix_with_an_ip_adapter_restores_too(ctx):
    before, _ = txt2img(ctx)
    hires = {"enabled": True, "upscaler": "Latent", "upscale_by": 2.0, "steps": 3, "denoising_strength": 0.5}
    _, result = txt2img(ctx, [ip_unit()], hires=hires)
    assert result.images[0].size == (2 * SIZE, 2 * SIZE)
    after, _ = txt2img(ctx)
    assert np.array_equal(after, before)


def test_without_an_encoder_the_message_says_which_and_where(ctx):
    import shutil

    shutil.rmtree(ctx.root / "models" / "clip_vision" / "tiny-vit")
    ctx.control.refresh()
    before, _ = txt2img(ctx)
    with pytest.raises(ValueError, match="clip_vision"):
        txt2img(ctx, [ip_unit()])
    after, _ = txt2img(ctx)
    assert np.array_equal(after, before)
