"""Segment Anything (SAM): click-to-mask and segment-everything on the user's sam_vit_*.pth files.

`SamLibrary` owns the models and the embedding cache; `masks` holds the pure
numpy/PIL helpers the UI and the /sam API share.
"""
from backend.extras.segment.common import SamModelNotFound, SamPrediction, Segment, SegmentError
from backend.extras.segment.config import SamConfig, detect_config
from backend.extras.segment.library import SamLibrary
from backend.extras.segment.masks import blend_mask, feather_mask, grow_mask, masked_image, pick_segment

__all__ = ["SamConfig", "SamLibrary", "SamModelNotFound", "SamPrediction", "Segment", "SegmentError",
           "blend_mask", "detect_config", "feather_mask", "grow_mask", "masked_image", "pick_segment"]
