"""What the Extra Networks panel shows: one card per checkpoint, LoRA or embedding.

Search matches the name, folder and (for LoRAs) the alias and trained-on
model; sort by name or by date (newest first); a folder filter narrows to one
sub-folder. The card's `insert` is what clicking it puts into the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.networks.lora import PREVIEW_SUFFIXES

KINDS = ("Checkpoints", "LoRA", "Textual Inversion")
SORTS = ("Name", "Date modified")
ALL_FOLDERS = "All"


@dataclass
class Card:
    kind: str
    name: str
    folder: str
    path: Path
    insert: str  # text for the prompt; for a checkpoint, its title to select
    preview: Path | None = None
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0


def _preview(path: Path) -> Path | None:
    base = path.with_suffix("") if path.is_file() else path
    for suffix in PREVIEW_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def all_cards(kind: str, networks, manager) -> list[Card]:
    if kind == "Checkpoints":
        return [Card(kind, c.model_name, str(Path(c.name).parent).replace(".", ""), c.path, c.title,
                     _preview(c.path), description=c.variant.label if c.variant else "")
                for c in manager.checkpoints() if not c.error]
    if kind == "LoRA":
        return [Card(kind, f.name, f.folder, f.path, f"<lora:{f.name}:1>", f.preview,
                     description=f.base_model or "", metadata=f.metadata)
                for f in networks.loras.files()]
    if kind == "Textual Inversion":
        cards = []
        for e in networks.embeddings.all():
            roots = [r for r in networks.embeddings.folders if r in e.path.parents]
            folder = e.path.parent.relative_to(roots[0]).as_posix() if roots else ""
            cards.append(Card(kind, e.name, "" if folder == "." else folder, e.path, e.name, _preview(e.path),
                              description=f"{e.length} vector{'s' * (e.length != 1)}"))
        return cards
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def folders(cards: list[Card]) -> list[str]:
    return [ALL_FOLDERS, *sorted({c.folder for c in cards if c.folder})]


def filter_cards(cards: list[Card], search: str = "", sort: str = "Name", folder: str = ALL_FOLDERS) -> list[Card]:
    needle = (search or "").strip().lower()
    chosen = [c for c in cards
              if (folder in (ALL_FOLDERS, "", None) or c.folder == folder or c.folder.startswith(folder + "/"))
              and (not needle or needle in " ".join([c.name, c.folder, c.description,
                                                     c.metadata.get("ss_output_name", "")]).lower())]
    if sort == "Date modified":
        return sorted(chosen, key=lambda c: (-c.mtime, c.name.lower()))
    return sorted(chosen, key=lambda c: c.name.lower())


def training_metadata(card: Card) -> dict[str, str]:
    """The kohya training keys worth showing (ss_*), as stored: the UI must escape them."""
    return {k: v for k, v in card.metadata.items() if k.startswith("ss_")}
