"""What the upscaler engine raises."""
from __future__ import annotations


class UpscaleError(ValueError):
    """A request or file the engine cannot serve; the message says what is wrong and what to do."""


class UpscaleInterrupted(Exception):
    """The caller's should_stop() said stop; raised between tiles. Not a failure, so not an UpscaleError."""
