"""sha256 of model files, computed once per file version and remembered on disk.

A1111 shows `sha256[:10]` as the model hash; hashing a 7 GB file takes a while,
so results are cached by path + size + mtime in a small JSON file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    def __init__(self, cache_file: Path | None):
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if cache_file and cache_file.is_file():
            try:
                self._entries = json.loads(cache_file.read_text()).get("sha256", {})
            except (OSError, ValueError):
                log.warning("ignoring unreadable hash cache %s", cache_file)

    def cached(self, path: Path) -> str | None:
        """The cached hash if the file is unchanged since it was hashed, else None (never reads the file)."""
        entry = self._entries.get(str(path.resolve()))
        stat = path.stat()
        if entry and entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
            return entry["sha256"]
        return None

    def sha256(self, path: Path) -> str:
        if found := self.cached(path):
            return found
        stat = path.stat()
        value = sha256_of(path)
        with self._lock:
            self._entries[str(path.resolve())] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": value}
            self._save()
        return value

    def _save(self) -> None:
        if not self._file:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".cache-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"sha256": self._entries}, f)
        os.replace(tmp, self._file)
