"""Finding and loading extensions at start-up, each in isolation.

Every folder of `extensions/` is looked at, in name order; folders starting with
`.` or `_` are skipped. A folder with `studio-extension.json` is one of ours;
one with `scripts/*.py` and no manifest is an A1111 extension, listed as not
compatible and never imported. An extension that is disabled, that needs
another plugin API version, whose id is taken, or that raises while loading
is listed with the reason (and a logged traceback) and adds no hook: its
hooks only join the studio's when `register(api)` returned.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.extensions.api import API_VERSION, ExtensionApi, Hooks
from backend.extensions.manifest import (
    MANIFEST,
    ExtensionManifest,
    ManifestError,
    read_manifest,
)

log = logging.getLogger(__name__)

LOADED, DISABLED, FAILED, INCOMPATIBLE, A1111 = "loaded", "disabled", "failed", "incompatible", "A1111 extension"


@dataclass
class ExtensionRecord:
    folder: Path
    status: str
    manifest: ExtensionManifest | None = None
    error: str = ""  # why it is not loaded (empty when loaded)
    seconds: float = 0.0  # how long its import and register() took

    @property
    def id(self) -> str:
        return self.manifest.id if self.manifest else self.folder.name

    @property
    def enabled(self) -> bool:
        return self.status != DISABLED


@dataclass
class Extensions:
    records: list[ExtensionRecord]
    hooks: Hooks

    def loaded(self) -> list[ExtensionRecord]:
        return [r for r in self.records if r.status == LOADED]


def _candidates(folders: list[Path]) -> list[Path]:
    found = []
    for root in folders:
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    return found


def _load_one(record: ExtensionRecord, hooks: Hooks, reserved: Mapping[str, set[str]],
              options: Callable[[], Mapping[str, Any]] | None) -> None:
    """Import the entry module and call register(api) on hooks of its own; merged only on success."""
    manifest = record.manifest
    entry = record.folder / manifest.entry
    own = Hooks()
    started = time.perf_counter()
    module_name = f"studio_extension_{manifest.id.replace('-', '_')}"
    try:
        if not entry.is_file():
            raise FileNotFoundError(f"its entry module {manifest.entry} is missing")
        # An entry named __init__.py makes the extension a package, so it can split itself into modules
        # and import them relatively (`from . import grid`).
        package = [str(entry.parent)] if entry.name == "__init__.py" else None
        spec = importlib.util.spec_from_file_location(module_name, entry, submodule_search_locations=package)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so the extension's own relative imports and pickling work
        spec.loader.exec_module(module)
        register = getattr(module, "register", None)
        if not callable(register):
            raise AttributeError(f"{manifest.entry} defines no register(api)")
        register(ExtensionApi(manifest.id, own, reserved, taken=hooks, options=options))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - listed; the studio starts anyway (even on sys.exit)
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        record.status, record.error = FAILED, f"{type(exc).__name__}: {exc}"
        log.error("extension %s failed to load:\n%s", manifest.id, traceback.format_exc())
    else:
        record.status = LOADED
        hooks.merge(own)
    finally:
        record.seconds = time.perf_counter() - started


def load_extensions(folders: list[Path], disabled: set[str] | frozenset[str] = frozenset(), disable_all: bool = False,
                    api_version: str = API_VERSION, reserved: Mapping[str, set[str]] | None = None,
                    options: Callable[[], Mapping[str, Any]] | None = None) -> Extensions:
    """Every extension under `folders`; `disabled` holds ids (or folder names) not to load, `disable_all` all.

    `reserved`: the studio's own names per kind of registration ("tabs", "settings", "scripts", ...), which
    no extension may take; `options`: the current settings, for `api.option()`."""
    hooks = Hooks()
    records: list[ExtensionRecord] = []
    taken: set[str] = set()
    for folder in _candidates(folders):
        if not (folder / MANIFEST).is_file():
            if any((folder / "scripts").glob("*.py")):
                records.append(ExtensionRecord(folder, A1111, error="A1111 extension, not compatible: it is "
                                               "written for A1111's internals (scripts/*.py), not this "
                                               "studio's plugin API, so it is not imported"))
            continue
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            records.append(ExtensionRecord(folder, FAILED, error=str(exc)))
            continue
        record = ExtensionRecord(folder, LOADED, manifest)
        records.append(record)
        if disable_all or manifest.id in disabled or folder.name in disabled:
            record.status = DISABLED
        elif manifest.id in taken:
            record.status, record.error = FAILED, f"the id {manifest.id!r} is taken by an extension loaded before it"
        elif not manifest.accepts(api_version):
            record.status = INCOMPATIBLE
            record.error = f"needs plugin API {manifest.api}; this studio has {api_version}"
        else:
            _load_one(record, hooks, reserved or {}, options)
        if record.status == LOADED:
            taken.add(manifest.id)
            log.info("extension %s %s loaded in %.2f s", manifest.id, manifest.version, record.seconds)
        elif record.error:
            log.warning("extension %s: %s", record.id, record.error)
    return Extensions(records=records, hooks=hooks)
