"""Weighted text -> 75-token chunks, as A1111 cuts prompts for CLIP.

A prompt longer than 75 tokens is never truncated: it becomes several
chunks, each encoded on its own and concatenated. A chunk that fills up
breaks after its last comma when that comma is within 20 tokens of the end,
so a phrase is not cut in half; BREAK ends a chunk early. A textual-inversion
embedding's name becomes its vectors (several token slots), and an embedding
that would straddle two chunks moves whole to the next.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from backend.networks.embeddings import Embedding
from backend.prompts.attention import BREAK

CHUNK_LENGTH = 75  # CLIP's 77 positions minus the start and end tokens
COMMA_BACKTRACK = 20


class EmbeddingLookup(Protocol):
    def match(self, ids: list[int], start: int) -> tuple[int, "Embedding"] | None:
        """At ids[start]: (tokens the name spans, the embedding), or None."""


@dataclass
class Chunk:
    ids: list[int] = field(default_factory=list)  # content only: no start/end tokens, no padding
    weights: list[float] = field(default_factory=list)
    vectors: list[tuple[int, Embedding]] = field(default_factory=list)  # (content position, embedding)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TokenizedPrompt:
    chunks: list[Chunk]
    embeddings_used: list[str] = field(default_factory=list)


def _comma_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(",</w>")


def tokenize_weighted(pieces: list[tuple[str, float]], tokenizer, embeddings: EmbeddingLookup | None = None
                      ) -> TokenizedPrompt:
    comma = _comma_id(tokenizer)
    chunks: list[Chunk] = []
    used: list[str] = []
    current = Chunk()
    last_comma = -1

    def close_chunk(final: bool = False) -> None:
        nonlocal current, last_comma
        if final and not chunks and not current.ids:
            chunks.append(current)  # an empty prompt is one empty chunk
        elif current.ids or not final:
            chunks.append(current)
        current, last_comma = Chunk(), -1

    def make_room() -> None:
        """A full chunk closes when the next token comes; after its last comma if that is near the end."""
        nonlocal current
        if len(current) < CHUNK_LENGTH:
            return
        cut = last_comma + 1
        if last_comma != -1 and len(current) - last_comma <= COMMA_BACKTRACK and not _vector_after(current, cut):
            rest_ids, rest_weights = current.ids[cut:], current.weights[cut:]
            del current.ids[cut:], current.weights[cut:]
            close_chunk()
            current.ids, current.weights = rest_ids, rest_weights
        else:
            close_chunk()

    for text, weight in pieces:
        if text == BREAK and weight == -1:
            close_chunk()
            continue
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        i = 0
        while i < len(ids):
            found = embeddings.match(ids, i) if embeddings is not None else None
            if found is None:
                make_room()
                if ids[i] == comma:
                    last_comma = len(current)
                current.ids.append(ids[i])
                current.weights.append(weight)
                i += 1
                continue
            span, embedding = found
            length = min(embedding.length, CHUNK_LENGTH)
            if len(current) + length > CHUNK_LENGTH:
                close_chunk()
            current.vectors.append((len(current), embedding))
            current.ids.extend([ids[i]] * length)  # placeholders: their vectors are swapped in
            current.weights.extend([weight] * length)
            used.append(embedding.name)
            i += span
    close_chunk(final=True)
    return TokenizedPrompt(chunks=chunks, embeddings_used=sorted(set(used)))


def _vector_after(chunk: Chunk, position: int) -> bool:
    return any(pos >= position for pos, _ in chunk.vectors)


def chunk_input_ids(chunk: Chunk, tokenizer) -> list[int]:
    """[start] + content + [end] + padding to 77, as the tokenizer pads (SD1 pads with the end token,
    OpenCLIP with "!")."""
    ids = [tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (CHUNK_LENGTH + 2 - len(ids))


def chunk_weights(chunk: Chunk) -> list[float]:
    return [1.0, *chunk.weights] + [1.0] * (CHUNK_LENGTH + 1 - len(chunk.weights))
