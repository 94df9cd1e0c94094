"""Distilled SDXL checkpoints (SSD-1B, Segmind Vega) in the original single-file layout: told apart from
SDXL base by their UNets' transformer depths, loaded with every weight in place, and sampling exactly as
bare diffusers does on the same weights."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from backend.devices import DeviceSettings
from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from backend.generation.txt2img import run_txt2img
from backend.models import architecture as arch
from backend.models.loader import build_pipeline
from backend.models.manager import ModelManager
from backend.models.types import ModelFamily
from tests.fixtures.tiny_checkpoints import TinySpec, build_components, to_original_layout, write_checkpoint

CPU = DeviceSettings.from_flags(device="cpu", precision="full")
UNET = "model.diffusion_model."
SEED = 7

# ComfyUI's model_detection for the real files: transformer_depth (one per input resnet),
# transformer_depth_output (consumed from the END: its last entry is output_blocks.0) and
# transformer_depth_middle (-1: middle_block.0, a lone resnet).
COMFY = {
    "base": ([0, 0, 2, 2, 10, 10], [0, 0, 0, 2, 2, 2, 10, 10, 10], 10),
    "ssd-1b": ([0, 0, 2, 2, 4, 4], [0, 0, 0, 1, 1, 2, 10, 4, 4], -1),
    "vega": ([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], -1),
}
NAMES = {"base": None, "ssd-1b": "SSD-1B", "vega": "Vega"}


def _blocks(sd, prefix: str) -> int:
    """Transformer blocks under `prefix` (an input/output/middle block's attention slot)."""
    found = {m.group(1) for k in sd for m in [re.match(re.escape(prefix) + r"transformer_blocks\.(\d+)\.", k)] if m}
    return len(found)


@pytest.mark.parametrize("layout", COMFY)
def test_fixture_has_the_real_layout_and_is_told_apart_by_its_unet(layout):
    spec = TinySpec("sdxl", sdxl_layout=layout)
    sd = to_original_layout(spec, build_components(spec, SEED))
    down, up, middle = COMFY[layout]
    resnets = [i for i in range(1, 9) if UNET + f"input_blocks.{i}.0.op.weight" not in sd]  # not downsamplers
    assert [_blocks(sd, UNET + f"input_blocks.{i}.1.") for i in resnets] == down
    assert [_blocks(sd, UNET + f"output_blocks.{i}.1.") for i in range(9)] == up[::-1]
    assert UNET + "middle_block.0.in_layers.0.weight" in sd
    if middle == -1:
        assert not any(k.startswith((UNET + "middle_block.1.", UNET + "middle_block.2.")) for k in sd)
    else:
        assert _blocks(sd, UNET + "middle_block.1.") == middle
    variant = arch.detect_variant(sd)
    assert variant.family is ModelFamily.SDXL and variant.distilled == NAMES[layout]


def test_another_reduced_unet_is_named_so_and_still_loads():
    spec = TinySpec("sdxl", sdxl_layout="ssd-1b")
    sd = to_original_layout(spec, build_components(spec, SEED))
    cut = UNET + "output_blocks.2.1.transformer_blocks.9."
    sd = {k: v for k, v in sd.items() if not k.startswith(cut)}
    variant = arch.detect_variant(sd)
    assert variant.distilled == "reduced SDXL" and variant.label == "SDXL (reduced SDXL)"
    unet = build_pipeline(sd, variant, torch.float32).unet
    assert [len(a.transformer_blocks) for a in unet.up_blocks[0].attentions] == [4, 4, 9]


@pytest.fixture(scope="module", params=["ssd-1b", "vega"])
def distilled(request, tmp_path_factory):
    layout = request.param
    folder = tmp_path_factory.mktemp(layout)
    write_checkpoint(folder / f"{layout}.safetensors", TinySpec("sdxl", sdxl_layout=layout), seed=SEED)
    loaded = ModelManager([folder], CPU).load(f"{layout}.safetensors")
    return layout, loaded, build_components(TinySpec("sdxl", sdxl_layout=layout), seed=SEED)


def test_detected_and_loaded_with_the_real_block_structure(distilled):
    layout, loaded, _ = distilled
    assert loaded.variant.family is ModelFamily.SDXL and loaded.variant.distilled == NAMES[layout]
    assert loaded.variant.label == f"SDXL ({NAMES[layout]})"
    unet = loaded.pipe.unet
    down, up, _ = COMFY[layout]
    assert [len(a.transformer_blocks) for b in unet.down_blocks for a in getattr(b, "attentions", [])] == \
        [d for d in down if d]
    assert [len(a.transformer_blocks) for b in unet.up_blocks for a in getattr(b, "attentions", [])] == \
        [d for d in up[::-1] if d]
    # The middle block is one resnet, no attention (diffusers' UNetMidBlock2D with num_layers=0).
    assert unet.config.mid_block_type == "UNetMidBlock2D"
    assert type(unet.mid_block).__name__ == "UNetMidBlock2D" and len(unet.mid_block.resnets) == 1
    assert not any(unet.mid_block.attentions)
    if layout == "ssd-1b":  # uneven on the way up: diffusers needs the per-resnet "reverse" depths
        assert unet.config.reverse_transformer_layers_per_block == [[4, 4, 10], [2, 1, 1], [1, 1, 1]]
        assert unet.config.transformer_layers_per_block == [[1, 1], [2, 2], [4, 4]]
    else:  # Vega is symmetric
        assert unet.config.transformer_layers_per_block == [1, 1, 2]
        assert unet.config.reverse_transformer_layers_per_block is None


def test_every_weight_comes_back_exactly(distilled):
    _, loaded, source = distilled
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = getattr(loaded.pipe, part).state_dict()
        theirs = {k: v for k, v in source[part].state_dict().items() if not k.endswith("position_ids")}
        assert set(theirs) <= set(ours) and (part != "unet" or set(ours) == set(theirs))
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), f"{part}.{key} differs"


def _studio(loaded, seed: int) -> np.ndarray:
    request = Txt2ImgRequest(prompt="a red cat", negative_prompt="blurry", width=64, height=64, steps=2, seed=seed,
                             cfg_scale=7.0, sampler_name="Euler", save_images=False)
    out = run_txt2img(loaded, request, JobControl(), device_settings=CPU, prompt=request.prompt,
                      negative_prompt=request.negative_prompt)
    return np.asarray(out.images[0], dtype=np.int16)


def test_txt2img_gives_bare_diffusers_pixels(distilled):
    _, loaded, source = distilled
    ours = _studio(loaded, seed=11)
    # Bare diffusers on the fixture's own models. The original layout does not store the latent scale:
    # SDXL files use the family's (0.13025), which the source VAE is told.
    source["vae"].register_to_config(scaling_factor=arch.family_config(ModelFamily.SDXL, "vae")["scaling_factor"])
    bare = StableDiffusionXLPipeline(
        vae=source["vae"], text_encoder=source["text_encoder"], text_encoder_2=source["text_encoder_2"],
        tokenizer=loaded.pipe.tokenizer, tokenizer_2=loaded.pipe.tokenizer_2, unet=source["unet"],
        scheduler=EulerDiscreteScheduler.from_config(loaded.pipe.scheduler.config), add_watermarker=False)
    bare.set_progress_bar_config(disable=True)
    theirs = bare("a red cat", negative_prompt="blurry", width=64, height=64, num_inference_steps=2,
                  guidance_scale=7.0, generator=torch.Generator().manual_seed(11)).images[0]
    assert np.array_equal(ours, np.asarray(theirs, dtype=np.int16))
    assert ours.std() > 1  # a picture, not a flat field
    assert np.abs(_studio(loaded, seed=12) - ours).mean() > 1
