"""BLIP captioning from a transformers folder in models/BLIP, loaded without letting transformers open the weights.

The folder is what `BlipForConditionalGeneration.save_pretrained` and
`BlipProcessor.save_pretrained` write (e.g. Salesforce/blip-image-captioning-base
as downloaded): config.json, model.safetensors or pytorch_model.bin, and the
tokenizer / image processor files. The model is built from config.json and the
weights go in from the studio's safe loader (format by content, pickles only
with weights_only=True); the processor files hold no weights.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BlipLoadError(ValueError):
    pass


def find_blip_folder(blip_dir: Path) -> Path | None:
    """`blip_dir` itself when it holds config.json, else its first sub-folder (by name) that does."""
    if (blip_dir / "config.json").is_file():
        return blip_dir
    if blip_dir.is_dir():
        for folder in sorted(p for p in blip_dir.iterdir() if p.is_dir()):
            if (folder / "config.json").is_file():
                return folder
    return None


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise BlipLoadError(f"{folder} has a config.json but no weights: put {' or '.join(WEIGHT_FILES)} beside it")


def signature(folder: Path) -> tuple:
    """What changes when the user replaces the model: the files' names, sizes and times."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


@dataclass
class BlipCaptioner:
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype
    source: tuple

    @torch.inference_mode()
    def caption(self, image: Image.Image, num_beams: int = 1, min_length: int = 24, max_length: int = 48) -> str:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        tokens = self.model.generate(pixel_values=pixels, num_beams=num_beams, min_length=min_length,
                                     max_length=max(max_length, min_length))
        return self.processor.decode(tokens[0], skip_special_tokens=True).strip()


def load_blip(folder: Path, device: torch.device, dtype: torch.dtype) -> BlipCaptioner:
    """The captioning model of `folder`; BlipLoadError says what is wrong with a file."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    path = weights_file(folder)
    try:
        state_dict, _ = read_state_dict(path)
    except CheckpointLoadError as exc:
        raise BlipLoadError(f"the BLIP model in {folder} cannot be used: {exc}") from None
    try:
        config = BlipConfig.from_pretrained(folder, local_files_only=True)
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BlipLoadError(f"{folder} is not a BLIP captioning folder: {str(exc).splitlines()[0]}") from None
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = BlipForConditionalGeneration(config)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})  # the output layer shares the word embeddings
    expected = set(model.state_dict())
    # Files saved by transformers 4.2x (the Salesforce downloads) still carry position_ids, which v5 no longer
    # saves: as transformers itself, drop them and use the config's own values (set below).
    unsaved_buffers = {name for name, _ in model.named_buffers()} - expected
    state_dict = {k: v for k, v in state_dict.items() if k not in unsaved_buffers}
    missing = sorted(expected - set(state_dict) - tied)
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise BlipLoadError(f"{path} is not the weights of this BLIP config: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]} ({len(missing)} and {len(unexpected)} keys)")
    try:
        model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as exc:
        raise BlipLoadError(f"{path} does not fit its config.json: {str(exc).splitlines()[-1].strip()[:300]}") \
            from None
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    for name in left:  # buffers no file carries (position ids): the config's own values
        module_name, _, buffer = name.rpartition(".")
        module = model.get_submodule(module_name)
        if buffer == "position_ids":
            module.register_buffer(buffer, torch.arange(module.position_ids.shape[-1]).expand((1, -1)),
                                   persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise BlipLoadError(f"{path}: no values for {left[:3]}")
    model = model.to(device=device, dtype=dtype).eval()
    return BlipCaptioner(model=model, processor=processor, device=device, dtype=dtype, source=signature(folder))
