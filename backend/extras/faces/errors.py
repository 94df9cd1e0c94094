"""The one error the face-restoration package shows its users."""
from __future__ import annotations


class FaceRestoreError(ValueError):
    """Face restoration cannot run; the message says why, and for a missing file which one and where it goes."""
