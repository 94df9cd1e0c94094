"""Build segment_anything's `Sam` for a detected config and fill it from a weights file, running none of its code.

The file is read only through backend.models.safe_load (hostile pickles are
refused before anything in them runs); the model is built on the meta device
with build_sam's parameters and the weights are assigned in place, strictly,
so nothing is allocated twice and a file that does not fit is named.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from backend.extras.segment.common import SegmentError
from backend.extras.segment.config import DECODER_HEADS, SamConfig, detect_config
from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_safetensors_header, read_state_dict, sniff_format

# build_sam's normalisation; not saved in the checkpoints (non-persistent buffers)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class CountingEncoder(ImageEncoderViT):
    """The ViT image encoder, telling its owner each time it runs (the costly step embeddings save).

    It also takes float32 pixels into whatever dtype its weights are in and
    hands float32 features on, so the encoder can run in bf16/fp16 while the
    small prompt encoder and mask decoder stay in float32, as SamPredictor
    feeds them.
    """

    def __init__(self, on_run: Callable[[], None], **kwargs) -> None:
        super().__init__(**kwargs)
        self._on_run = on_run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._on_run()
        return super().forward(x.to(self.patch_embed.proj.weight.dtype)).float()


def build_sam(config: SamConfig, on_encoder_run: Callable[[], None] = lambda: None) -> Sam:
    """segment_anything's _build_sam, with the sizes read from the weights instead of fixed per type."""
    grid = config.img_size // config.patch_size
    return Sam(
        image_encoder=CountingEncoder(
            on_encoder_run, depth=config.depth, embed_dim=config.embed_dim, img_size=config.img_size,
            mlp_ratio=config.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.num_heads, patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.global_attn_indexes, window_size=config.window_size,
            out_chans=config.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size), mask_in_chans=config.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=DECODER_HEADS,
                                          attention_downsample_rate=config.attention_downsample_rate),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim),
        pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD),
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)[0]
    except CheckpointLoadError as exc:
        raise SegmentError(str(exc)) from None


def read_config(path: Path) -> SamConfig:
    """The config of a SAM file from its shapes; safetensors headers are read without the tensors."""
    try:
        if sniff_format(path) == "safetensors":
            return detect_config(read_safetensors_header(path)[0], path.name)
    except CheckpointLoadError as exc:
        raise SegmentError(str(exc)) from None
    # zip pickles are memory-mapped by safe_load, so this reads little more than the shapes
    return detect_config(read_weights(path), path.name)


def load_sam(path: Path, device: torch.device, dtype: torch.dtype,
             on_encoder_run: Callable[[], None] = lambda: None) -> tuple[Sam, SamConfig]:
    """A ready, eval-mode Sam from `path`: image encoder in `dtype`, the rest in float32, on `device`."""
    weights = read_weights(path)
    config = detect_config(weights, path.name)
    with torch.device("meta"):
        sam = build_sam(config, on_encoder_run)
    try:
        sam.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise SegmentError(f"{path.name}: the weights do not fit a {config.model_type} SAM "
                           f"({'; '.join(lines)[:400]})") from None
    sam.pixel_mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
    sam.pixel_std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
    left = [name for name, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if left:
        raise SegmentError(f"{path.name}: no weights for {', '.join(left[:3])}")
    sam.to(device=device, dtype=torch.float32)
    sam.image_encoder.to(dtype=dtype)
    return sam.eval().requires_grad_(False), config
