"""Regenerate tokenizer/vocab.json and tokenizer/merges.txt from open_clip's BPE file.

CLIP's vocabulary is derived deterministically from `bpe_simple_vocab_16e6.txt.gz`
(shipped in the open_clip_torch wheel): byte symbols, their `</w>` forms, one
entry per merge of the first 48,894 merges, then the two special tokens, 49,408
entries in all. The generated files ship with the studio, so loading never
needs open_clip or a network; run this only to rebuild them:

    python -m backend.models.configs.make_clip_tokenizer
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps this many merges after the header line
OUT_DIR = Path(__file__).parent / "tokenizer"


def byte_symbols() -> list[str]:
    """The printable stand-ins GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codepoints = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codepoints.append(256 + extra)
            extra += 1
    # Order matters: CLIP lists the printable bytes first, then the remapped ones.
    return [chr(c) for c in codepoints]


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + MERGE_COUNT]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def main() -> None:
    import open_clip  # only needed to regenerate

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    vocab, merges = build(bpe)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT_DIR / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT_DIR}")


if __name__ == "__main__":
    main()
