"""Prompt styles kept in an A1111 styles.csv (name,prompt,negative_prompt).

A style's text either holds a `{prompt}` placeholder, replaced by the user's
prompt, or is appended to it with ", ", exactly as A1111 applies styles.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """Put the prompt into one style text, A1111's merge_prompts."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleStore:
    """The user's styles.csv; seeded from the shipped starter set when missing."""

    def __init__(self, path: Path, starter: Path) -> None:
        self.path = Path(path)
        self.starter = Path(starter)
        self._styles: dict[str, Style] | None = None  # None: not loaded yet
        self._lock = threading.Lock()

    def reload(self) -> None:
        """Read styles.csv again (after the user edited it by hand)."""
        with self._lock:
            if not self.path.exists() and self.starter.exists():
                self._copy_starter()
            self._styles = _read_csv(self.path) if self.path.exists() else {}

    def names(self) -> list[str]:
        return list(self._loaded())

    def get(self, name: str) -> Style | None:
        return self._loaded().get(name)

    def apply(self, prompt: str, negative_prompt: str, names: Iterable[str]) -> tuple[str, str]:
        """Apply the named styles in order; an unknown name is a ValueError."""
        names = list(names)  # walked twice below
        styles = self._loaded()
        missing = [name for name in names if name not in styles]
        if missing:
            raise ValueError(f"unknown style(s): {', '.join(map(repr, missing))}; "
                             f"known styles are in {self.path}")
        for name in names:
            style = styles[name]
            prompt = merge_prompt(style.prompt, prompt)
            negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def _loaded(self) -> dict[str, Style]:
        if self._styles is None:
            self.reload()
        assert self._styles is not None
        return self._styles

    def _copy_starter(self) -> None:
        # Copy via a temp file so a crash never leaves a half-copied styles.csv
        # that would then stop the starter set from being copied again.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.close(fd)
        try:
            shutil.copyfile(self.starter, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read_csv(path: Path) -> dict[str, Style]:
    styles: dict[str, Style] = {}
    # utf-8-sig: files saved by Excel start with a BOM. Old A1111 files call
    # the prompt column "text".
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if not name:
                continue
            prompt = row.get("prompt") or row.get("text") or ""
            styles[name] = Style(name, prompt, row.get("negative_prompt") or "")
    return styles
