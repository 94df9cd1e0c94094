"""Which SAM a weights file holds, read from its keys and shapes (users rename files, so never from the name).

The three released models differ only in the image encoder's width, depth and
heads (segment_anything's build_sam_vit_b/l/h); everything else about them is
readable from the shapes as well, so a smaller SAM in the same key layout (the
tests' tiny one) is described exactly and builds the same way.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.extras.segment.common import SegmentError

ENCODER = "image_encoder."
DECODER = "mask_decoder."
PROMPT = "prompt_encoder."

# segment_anything's build_sam_vit_*: (embed dim, depth, heads, global attention blocks), all at 1024 px
OFFICIAL = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
# The decoder's head count leaves no trace in the shapes; every released SAM uses 8.
DECODER_HEADS = 8


@dataclass(frozen=True)
class SamConfig:
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    mlp_ratio: float
    prompt_embed_dim: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    attention_downsample_rate: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    @property
    def model_type(self) -> str:
        """"vit_b" / "vit_l" / "vit_h" for the released models, "custom" for another size in their layout."""
        for name, (dim, depth, heads, global_blocks) in OFFICIAL.items():
            if (self.embed_dim, self.depth, self.num_heads, self.global_attn_indexes) == (dim, depth, heads,
                                                                                          global_blocks) \
                    and (self.img_size, self.window_size, self.prompt_embed_dim) == (1024, 14, 256):
                return name
        return "custom"


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in (value.shape if hasattr(value, "shape") else value))


def _indexes(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in shapes if (m := pattern.match(key))})


def _refuse_other_families(shapes: Mapping[str, Any], name: str) -> None:
    """Name the SAM variants people put in models/sam that this SAM cannot run."""
    if any(k.startswith(DECODER + "hf_") or "compress_vit_feat" in k for k in shapes):
        raise SegmentError(f"{name}: this is a SAM-HQ model; only the original Segment Anything models "
                           "(sam_vit_b/l/h) are supported")
    if any(k.startswith(ENCODER + "layers.") for k in shapes):
        raise SegmentError(f"{name}: this is a MobileSAM (TinyViT) model; only the original Segment Anything "
                           "models (sam_vit_b/l/h) are supported")
    if not any(k.startswith(ENCODER) for k in shapes) or not any(k.startswith(DECODER) for k in shapes):
        raise SegmentError(f"{name}: not a Segment Anything model (it has no image_encoder / mask_decoder "
                           "weights); put sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth here")


def detect_config(weights: Mapping[str, Any], name: str = "the file") -> SamConfig:
    """The SAM that `weights` (key -> tensor, or anything with a .shape, or a shape tuple) was saved from."""
    shapes = {k: _shape_of(v) for k, v in weights.items()}
    _refuse_other_families(shapes, name)

    def shape(key: str, dims: int) -> tuple[int, ...]:
        found = shapes.get(key)
        if found is None or len(found) != dims:
            raise SegmentError(f"{name}: unknown Segment Anything layout ({key} is "
                               f"{'missing' if found is None else f'shaped {list(found)}'})")
        return found

    embed_dim, _, patch, _ = shape(ENCODER + "patch_embed.proj.weight", 4)
    grid = shape(ENCODER + "pos_embed", 4)[1]
    blocks = _indexes(shapes, ENCODER + "blocks.")
    if not blocks or blocks != list(range(len(blocks))):
        raise SegmentError(f"{name}: unknown Segment Anything layout (image encoder blocks {blocks[:4]}...)")
    # rel_pos tables are (2*size-1, head_dim): global blocks span the whole grid, the others one window.
    spans = [shape(f"{ENCODER}blocks.{i}.attn.rel_pos_h", 2) for i in blocks]
    head_dim = spans[0][1]
    global_blocks = tuple(i for i, s in zip(blocks, spans) if s[0] == 2 * grid - 1)
    windows = {(s[0] + 1) // 2 for i, s in zip(blocks, spans) if i not in global_blocks}
    if len(windows) > 1 or embed_dim % head_dim or any(s[1] != head_dim for s in spans):
        raise SegmentError(f"{name}: unknown Segment Anything layout (attention tables {sorted({s for s in spans})})")
    mlp_hidden = shape(f"{ENCODER}blocks.0.mlp.lin1.weight", 2)[0]
    prompt_dim = shape(ENCODER + "neck.0.weight", 4)[0]
    decoder_dim = shape(DECODER + "iou_token.weight", 2)[1]
    point_dim = shape(PROMPT + "point_embeddings.0.weight", 2)[1]
    if not prompt_dim == decoder_dim == point_dim or prompt_dim % DECODER_HEADS:
        raise SegmentError(f"{name}: unknown Segment Anything layout (encoder output {prompt_dim}, prompt "
                           f"encoder {point_dim}, mask decoder {decoder_dim} channels)")
    candidates = shape(DECODER + "mask_tokens.weight", 2)[0] - 1
    if candidates != 3:
        raise SegmentError(f"{name}: this SAM predicts {candidates} candidate masks; the studio expects 3")
    cross = shape(DECODER + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight", 2)[0]
    return SamConfig(
        img_size=grid * patch, patch_size=patch, embed_dim=embed_dim, depth=len(blocks),
        num_heads=embed_dim // head_dim, global_attn_indexes=global_blocks,
        window_size=windows.pop() if windows else 0, mlp_ratio=mlp_hidden / embed_dim,
        prompt_embed_dim=prompt_dim, mask_in_chans=shape(PROMPT + "mask_downscaling.3.weight", 4)[0],
        decoder_depth=len(_indexes(shapes, DECODER + "transformer.layers.")),
        decoder_mlp_dim=shape(DECODER + "transformer.layers.0.mlp.lin1.weight", 2)[0],
        attention_downsample_rate=max(1, decoder_dim // cross),
        iou_head_depth=len(_indexes(shapes, DECODER + "iou_prediction_head.layers.")),
        iou_head_hidden_dim=shape(DECODER + "iou_prediction_head.layers.0.weight", 2)[0],
    )
