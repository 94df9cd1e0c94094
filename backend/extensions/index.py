"""The index of available extensions, in A1111's format:

    {"tags": {"tag": "what it means", ...},
     "extensions": [{"name": ..., "url": ..., "description": ..., "tags": [...], "added": "YYYY-MM-DD"}, ...]}

The studio ships one (index.json beside this module). The setting `extensions_index_url` ("Extension index
URL" in Settings, and in /sdapi/v1/options) points at another file or an http(s) URL; it is read only when
the user asks ("Load index"), never at start.
"""
from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.extensions.git_urls import repo_name, same_repository

log = logging.getLogger(__name__)

SHIPPED_INDEX = Path(__file__).with_name("index.json")
INDEX_OPTION = "extensions_index_url"
MAX_INDEX_BYTES = 20 * 1024 * 1024  # A1111's own index is about 1 MB


class IndexReadError(ValueError):
    """The index could not be read; the message says where and why."""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = ()
    added: str = ""


@dataclass
class ExtensionIndex:
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    entries: list[IndexEntry] = field(default_factory=list)
    skipped: int = 0  # entries without a name or a URL


def index_source(options: Any) -> str:
    """Where the index is read from: the setting (an OptionsStore's), else the shipped file."""
    value = getattr(getattr(options, "options", None), INDEX_OPTION, None)
    return value.strip() if isinstance(value, str) and value.strip() else str(SHIPPED_INDEX)


def load_index(source: str, timeout: float = 15.0) -> ExtensionIndex:
    """Read and parse the index at `source` (an http(s) URL or a file path); raises IndexReadError."""
    source = (source or "").strip() or str(SHIPPED_INDEX)
    try:
        data = json.loads(_read(source, timeout))
    except (OSError, ValueError) as exc:
        raise IndexReadError(f"cannot read the extension index {source}: {exc}") from None
    return parse_index(data, source)


def _read(source: str, timeout: float) -> bytes:
    if source.lower().startswith(("http://", "https://")):
        request = urllib.request.Request(source, headers={"User-Agent": "sd-studio-extension-index"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            body = response.read(MAX_INDEX_BYTES + 1)
    elif "://" in source:
        raise ValueError("only http(s) URLs and file paths are read")
    else:
        with open(Path(source).expanduser(), "rb") as file:
            body = file.read(MAX_INDEX_BYTES + 1)
    if len(body) > MAX_INDEX_BYTES:
        raise ValueError(f"larger than {MAX_INDEX_BYTES // (1024 * 1024)} MB")
    return body


def parse_index(data: Any, source: str = "") -> ExtensionIndex:
    if not isinstance(data, dict) or not isinstance(data.get("extensions", []), list):
        raise IndexReadError(f"{source}: not an extension index (an object with an \"extensions\" list)")
    tags = data.get("tags") if isinstance(data.get("tags"), dict) else {}
    index = ExtensionIndex(source, {str(k): str(v) for k, v in tags.items()})
    for item in data.get("extensions", []):
        entry = _entry(item)
        if entry is None:
            index.skipped += 1
        else:
            index.entries.append(entry)
    return index


def _entry(item: Any) -> IndexEntry | None:
    if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
        return None
    tags = item.get("tags") if isinstance(item.get("tags"), list) else []
    return IndexEntry(name=str(item["name"]), url=str(item["url"]), description=str(item.get("description", "")),
                      tags=tuple(str(t) for t in tags), added=str(item.get("added", "")))


def is_installed(entry: IndexEntry, remotes: Iterable[str | None], folder_names: Iterable[str]) -> bool:
    """Installed when a folder's git remote is the entry's repository, or a folder has its repository's name."""
    if any(same_repository(entry.url, remote) for remote in remotes):
        return True
    return repo_name(entry.url).lower() in {name.lower() for name in folder_names}


def search(entries: Iterable[IndexEntry], text: str = "", tags: Iterable[str] = (), hide_installed: bool = False,
           installed: Iterable[IndexEntry] = ()) -> list[IndexEntry]:
    """Entries whose name, description or URL hold every word of `text`, that carry every tag in `tags`."""
    words = text.lower().split()
    wanted = set(tags)
    hidden = set(installed) if hide_installed else set()
    found = []
    for entry in entries:
        haystack = f"{entry.name} {entry.description} {entry.url}".lower()
        if entry not in hidden and all(w in haystack for w in words) and wanted <= set(entry.tags):
            found.append(entry)
    return found
