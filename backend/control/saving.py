"""Saving the ControlNet maps a job used, when the user asks for it (A1111's "save detected map")."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from PIL import Image

from backend.images.saving import FilenameTags, save_image


def save_control_maps(maps: list[Image.Image], directory: Path, started: datetime) -> list[Path]:
    """PNG files `NNNNN-<job time>.png` in `directory`, numbered after what is there."""
    tags = FilenameTags(job_timestamp=started)
    return [save_image(picture, directory, infotext="", fmt="png", filename_pattern="[job_timestamp]", tags=tags)
            for picture in maps]
