"""The longest prompt a job may have, checked before it is queued.

Every 75 tokens of a prompt is one more pass through each text encoder and 77 more keys in every
cross-attention of every step, so a prompt of 200,000 characters held the device for minutes. The
limit counts 75-token chunks as the encoder will cut them (attention syntax parsed, BREAK honoured;
an embedding counts as its name's tokens), with the tokenizer every SD1, SD2 and SDXL model shares.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from backend.prompts.attention import BREAK, parse_attention
from backend.prompts.tokens import CHUNK_LENGTH, COMMA_BACKTRACK, tokenize_weighted

# No token of the CLIP vocabulary spans more than 32 characters (its longest entries are runs of emoji
# bytes); with the space between two tokens, a text whose whitespace is collapsed and is longer than
# limit * 75 * this cannot fit, and is refused without tokenizing it.
_MAX_CHARS_PER_TOKEN = 33


class PromptTooLongError(ValueError):
    """A prompt over the studio's limit (Settings: prompt_max_chunks); the API answers 422."""


class PromptLimit:
    """Counts a prompt's chunks and refuses one over `max_chunks()` (read from the settings each time)."""

    def __init__(self, max_chunks: Callable[[], int]) -> None:
        self._max_chunks = max_chunks
        self._tokenizer = None
        self._lock = threading.Lock()  # the slow tokenizer's cache is not safe to share across threads

    def chunks(self, text: str) -> int:
        with self._lock:
            if self._tokenizer is None:
                from backend.models.loader import tokenizer_for
                from backend.models.types import ModelFamily

                self._tokenizer = tokenizer_for(ModelFamily.SD1, "tokenizer")
            return len(tokenize_weighted(parse_attention(text), self._tokenizer).chunks)

    def check(self, text: str, what: str = "prompt") -> None:
        limit = self._max_chunks()
        length = len(" ".join(text.split()))  # whitespace makes no tokens
        # A token takes at least one character and a chunk at least 75 - 20 tokens (it may break at a comma),
        # so a short text without BREAK fits without being tokenized.
        if length <= limit * (CHUNK_LENGTH - COMMA_BACKTRACK) and BREAK not in text:
            return
        if length > limit * CHUNK_LENGTH * _MAX_CHARS_PER_TOKEN:
            raise PromptTooLongError(f"the {what} is {length:,} characters, far over the limit of {limit} "
                                     f"chunks of {CHUNK_LENGTH} tokens (Settings: prompt_max_chunks)")
        found = self.chunks(text)
        if found > limit:
            raise PromptTooLongError(f"the {what} is {found} chunks of {CHUNK_LENGTH} tokens, over the limit of "
                                     f"{limit} (Settings: prompt_max_chunks)")
