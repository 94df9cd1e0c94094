"""What the segment package hands out: its error type and its two result shapes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.models.errors import UnknownCheckpointError


class SegmentError(ValueError):
    """A request or a model file we refuse; the message is fit to show a user as is."""


class SamModelNotFound(SegmentError, UnknownCheckpointError):
    """The named model is not in any of the SAM folders (the API answers 404, as for checkpoints)."""


@dataclass(frozen=True)
class SamPrediction:
    """SAM's three candidate masks for one prompt (small part, whole part, whole object) and their scores."""

    masks: list[np.ndarray]  # bool (H, W), the picture's size
    scores: list[float]      # the model's own IoU estimate for each mask


@dataclass(frozen=True)
class Segment:
    """One region found by the automatic mask generator."""

    mask: np.ndarray                               # bool (H, W)
    area: int                                      # pixels in the mask
    bbox: tuple[float, float, float, float]        # x, y, width, height (SAM's XYWH)
    score: float                                   # predicted IoU
