"""Build a diffusers pipeline from an original-layout file or a diffusers folder, offline.

Key conversion uses diffusers' own single-file converters (the ones
`from_single_file` runs), with configs built from our shipped family configs
and the file's shapes (architecture.py). Models are created on the meta device
and the converted tensors are assigned in place, so nothing is initialised twice.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Mapping

import torch
from accelerate import init_empty_weights
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from backend.devices import DeviceSettings
from backend.models import architecture as arch
from backend.models import prediction_probe
from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict
from backend.models.types import ModelFamily, ModelVariant
from backend.models.vae_precision import OwnPrecisionVae

log = logging.getLogger(__name__)
_V_PARAM = re.compile(r"parameterization:\s*[\"']?v[\"']?\s*$", re.MULTILINE)


def prediction_hint(path: Path) -> str | None:
    """A1111 reads `<checkpoint>.yaml` beside the file; SD2-v configs say `parameterization: "v"`."""
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        return "v_prediction" if _V_PARAM.search(sidecar.read_text(errors="replace")) else "epsilon"
    return None


def load_single_file(path: Path, device: DeviceSettings):
    """(pipeline, variant) for an original-layout checkpoint file."""
    sd, metadata = read_state_dict(path)
    hint = prediction_hint(path)
    try:
        variant = arch.detect_variant(sd, hint, arch.resolution_from_metadata(metadata))
        unet = None
        if needs_prediction_probe(sd, variant, hint):
            unet, variant = _probe_prediction(path.name, sd, variant, device.dtype)
        pipe = build_pipeline(sd, variant, device.dtype, device.text_encoder, device.vae, unet=unet)
    except arch.UnsupportedCheckpoint as exc:
        raise CheckpointLoadError(f"{path.name}: {exc}") from None
    except (RuntimeError, KeyError, ValueError) as exc:  # shapes that contradict each other
        raise CheckpointLoadError(f"{path.name}: the weights do not fit a known layout ({_short(exc)})") from None
    return place(pipe, device), variant


def needs_prediction_probe(sd: Mapping, variant: ModelVariant, hint: str | None) -> bool:
    """Whether only a test forward pass can tell this file's prediction type.

    SD2 alone ships both kinds (512 epsilon, 768-v) with identical keys and shapes. A sidecar .yaml (the
    user's word) or a v_pred marker key decides without a forward pass. SD2 inpainting is not probed, as in
    A1111: the released one (512-inpainting-ema) is epsilon, and the test input has no mask channels.
    """
    return (variant.family is ModelFamily.SD2 and not variant.inpainting and hint is None
            and arch.V_PRED_MARKER not in sd)


def _probe_prediction(name: str, sd: Mapping[str, torch.Tensor], variant: ModelVariant, dtype: torch.dtype):
    """(UNet, variant) after A1111's test forward pass, as if a .yaml had said what the pass found."""
    unet = build_unet(sd, variant, dtype)
    if not prediction_probe.probe_v_prediction(unet):
        log.info("%s: SD2 without a .yaml; its test forward pass says epsilon", name)
        return unet, variant
    log.info("%s: SD2 without a .yaml; its test forward pass says v-prediction (768-v)", name)
    variant = dataclasses.replace(variant, prediction_type="v_prediction")
    # SD2-v's config differs only where no weight does (upcast_attention, sample_size), but each attention
    # module takes upcast_attention when it is built: a new shell around the same tensors (no copy).
    return assemble(UNet2DConditionModel, arch.unet_config(sd, variant), unet.state_dict(), dtype), variant


def build_unet(sd: Mapping[str, torch.Tensor], variant: ModelVariant, dtype: torch.dtype) -> UNet2DConditionModel:
    config = arch.unet_config(sd, variant)
    return assemble(UNet2DConditionModel, config, convert_ldm_unet_checkpoint(sd, config), dtype)


def build_pipeline(sd: Mapping[str, torch.Tensor], variant: ModelVariant, dtype: torch.dtype,
                   text_dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None,
                   unet: UNet2DConditionModel | None = None):
    """`dtype` is the UNet's; the text encoders and the VAE may have their own (None: the UNet's).

    `unet`: one already built from `sd` for this `variant` (the prediction probe's); None builds it.
    """
    family = variant.family
    text_dtype, vae_dtype = text_dtype or dtype, vae_dtype or dtype
    if unet is None:
        unet = build_unet(sd, variant, dtype)
    vae_cfg = arch.vae_config(sd, variant)
    vae = assemble(OwnPrecisionVae, vae_cfg, convert_ldm_vae_checkpoint(sd, vae_cfg), vae_dtype)
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config(variant))

    if family is ModelFamily.SD1:
        text_encoder = _clip(sd, family, arch.CLIP_SD1, text_dtype)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_for(family, "tokenizer"),
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    if family is ModelFamily.SD2:
        text_encoder = _open_clip(sd, family, arch.OPENCLIP_SD2, "text_encoder", CLIPTextModel, text_dtype)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_for(family, "tokenizer"),
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    if family is ModelFamily.SDXL:
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip(sd, family, arch.CLIP_XL, text_dtype),
            text_encoder_2=_open_clip(sd, family, arch.OPENCLIP_XL, "text_encoder_2", CLIPTextModelWithProjection,
                                      text_dtype),
            tokenizer=tokenizer_for(family, "tokenizer"), tokenizer_2=tokenizer_for(family, "tokenizer_2"),
            unet=unet, scheduler=scheduler)
    # The refiner has only the OpenCLIP encoder and conditions on an aesthetic score.
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None,
        text_encoder_2=_open_clip(sd, family, arch.OPENCLIP_REFINER, "text_encoder_2", CLIPTextModelWithProjection,
                                  text_dtype),
        tokenizer=None, tokenizer_2=tokenizer_for(family, "tokenizer_2"), unet=unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def scheduler_config(variant: ModelVariant) -> dict:
    """The family's training noise schedule, as this file's variant was trained on it."""
    config = dict(arch.family_config(variant.family, "scheduler"), prediction_type=variant.prediction_type)
    if variant.zero_terminal_snr:
        # The last step is pure noise, so sampling must start there (Lin et al. 2023: "trailing" spacing).
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


def tokenizer_for(family: ModelFamily, part: str) -> CLIPTokenizer:
    settings = arch.family_config(family, part)
    return CLIPTokenizer(str(arch.TOKENIZER_DIR / "vocab.json"), str(arch.TOKENIZER_DIR / "merges.txt"),
                         pad_token=settings["pad_token"], model_max_length=settings["model_max_length"])


def assemble(cls, config: dict, state: dict, dtype: torch.dtype):
    """Create a model without initialising it and assign the converted weights (strict: every key must fit)."""
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _clip(sd, family: ModelFamily, prefix: str, dtype: torch.dtype) -> CLIPTextModel:
    config = CLIPTextConfig(**arch.clip_config(sd, family, prefix))
    state = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(prefix)}, prefix)
    # transformers >= 5.6 flattened CLIPTextModel: its keys no longer start with `text_model.`
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state.pop("embeddings.position_ids", None)
    return assemble(CLIPTextModel, config, state, dtype)


def _open_clip(sd, family: ModelFamily, prefix: str, part: str, cls, dtype: torch.dtype):
    config = CLIPTextConfig(**arch.open_clip_config(sd, family, prefix, part))
    with init_empty_weights(include_buffers=False):
        shell = cls(config)
    state = convert_open_clip_checkpoint(shell, {k: v for k, v in sd.items() if k.startswith(prefix)}, prefix)
    if cls is CLIPTextModel:  # flattened model; SD2 files also carry layers and a projection SD2 never uses
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
        wanted = set(shell.state_dict())
        state = {k: v for k, v in state.items() if k in wanted}
    return assemble(cls, config, state, dtype)


def load_diffusers_folder(path: Path, device: DeviceSettings):
    """(pipeline, variant) for a diffusers folder (model_index.json), with local files only."""
    import json

    index = json.loads((path / "model_index.json").read_text())
    cls = {"StableDiffusionPipeline": StableDiffusionPipeline, "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
           "StableDiffusionInpaintPipeline": StableDiffusionPipeline,
           "StableDiffusionXLImg2ImgPipeline": StableDiffusionXLImg2ImgPipeline}.get(index.get("_class_name"))
    if cls is None:
        raise CheckpointLoadError(f"{path.name}: diffusers pipeline {index.get('_class_name')!r} is not supported")
    try:
        # The VAE in its own precision, the text encoders in theirs; from_pretrained takes one dtype for all.
        parts = {"vae": OwnPrecisionVae.from_pretrained(path / "vae", torch_dtype=device.vae, local_files_only=True)}
        for name in ("text_encoder", "text_encoder_2"):
            if index.get(name) and index[name][0] and (path / name).is_dir() and device.text_encoder != device.dtype:
                model_cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                parts[name] = model_cls.from_pretrained(path / name, torch_dtype=device.text_encoder,
                                                        local_files_only=True)
        pipe = cls.from_pretrained(path, torch_dtype=device.dtype, local_files_only=True, safety_checker=None,
                                   requires_safety_checker=False, **parts) if cls is StableDiffusionPipeline else \
            cls.from_pretrained(path, torch_dtype=device.dtype, local_files_only=True, **parts)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointLoadError(f"{path.name}: could not load the diffusers folder ({_short(exc)})") from None
    unet_cfg = pipe.unet.config
    family = (ModelFamily.SDXL_REFINER if cls is StableDiffusionXLImg2ImgPipeline else
              ModelFamily.SDXL if cls is StableDiffusionXLPipeline else
              ModelFamily.SD2 if unet_cfg.cross_attention_dim == 1024 else ModelFamily.SD1)
    variant = ModelVariant(family=family, prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
                           inpainting=unet_cfg.in_channels == 9,
                           zero_terminal_snr=bool(pipe.scheduler.config.get("rescale_betas_zero_snr", False)))
    return place(pipe, device), variant


def place(pipe, device: DeviceSettings):
    """Move a pipeline to its device, or set up offloading (--medvram / --lowvram)."""
    if device.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device.device)
    elif device.offload == "model":
        pipe.enable_model_cpu_offload(device=device.device)
    else:
        pipe.to(device.device)
    if device.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if device.vae_channels_last:
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
