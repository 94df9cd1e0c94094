"""A1111-syntax prompts -> the embeddings a diffusers pipeline takes (`prompt_embeds`...).

Each text goes: attention parse -> 75-token chunks -> each chunk through the
text encoder(s) -> per-token weights applied and the chunk's mean restored
(A1111's "Original" emphasis) -> chunks concatenated along the tokens. SDXL
runs the same chunks through both encoders and joins them along the features;
its pooled vector comes from the first chunk. Textual-inversion vectors enter
through a forward hook on the token embedding, only for the duration of one
encode, so the model itself never changes.

Clip skip: SD1/SD2 take hidden state -clip_skip through the final layer norm
(1 = the last layer); SDXL takes hidden state -(clip_skip + 1) without it
(1 = the penultimate layer, SDXL's own choice).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from backend.networks.embeddings import SINGLE, EmbeddingMatcher, EmbeddingStore
from backend.prompts.attention import parse_attention
from backend.prompts.tokens import Chunk, chunk_input_ids, chunk_weights, tokenize_weighted


@dataclass
class _Encoder:
    tokenizer: object
    model: torch.nn.Module
    embedding_key: str  # which vectors of an embedding this encoder takes
    sdxl: bool  # penultimate-layer convention, no final norm
    pooled: bool  # this encoder's pooled, projected output is SDXL's `pooled_prompt_embeds`


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, 77 * chunks, width)
    pooled: torch.Tensor | None = None  # (1, width) for SDXL
    embeddings_used: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // 77


def text_encoders(pipe) -> list[_Encoder]:
    """The text encoders of an SD1/SD2/SDXL pipeline, in the order their features are joined."""
    encoders = []
    first = getattr(pipe, "text_encoder", None)
    second = getattr(pipe, "text_encoder_2", None)
    sdxl = second is not None
    if first is not None:
        encoders.append(_Encoder(pipe.tokenizer, first, "clip_l" if sdxl else SINGLE, sdxl, pooled=False))
    if second is not None:
        encoders.append(_Encoder(pipe.tokenizer_2, second, "clip_g", True, pooled=True))
    return encoders


def embedding_widths(pipe) -> dict[str, int]:
    return {e.embedding_key: e.model.config.hidden_size for e in text_encoders(pipe)}


class PromptEncoder:
    """Encodes texts for one pipeline with one clip skip and the embeddings that fit it."""

    def __init__(self, pipe, clip_skip: int = 1, embeddings: EmbeddingStore | None = None):
        self.encoders = text_encoders(pipe)
        if not self.encoders:
            raise ValueError("this pipeline has no text encoder")
        self.clip_skip = max(1, clip_skip)
        # Embeddings whose width does not fit this model stay plain words; `skipped` says why.
        fits, self.skipped = embeddings.for_widths(embedding_widths(pipe)) if embeddings else ([], [])
        self._matcher = EmbeddingMatcher(fits, self.encoders[0].tokenizer) if fits else None
        self._cache: dict[str, Conditioning] = {}
        # The UNet's dtype: the text encoders may run in another precision (DeviceSettings.text_encoder).
        unet = getattr(pipe, "unet", None)
        self.dtype = unet.dtype if unet is not None else self.encoders[0].model.dtype

    def encode(self, text: str) -> Conditioning:
        if text not in self._cache:
            self._cache[text] = self._encode(text)
        return self._cache[text]

    @torch.no_grad()
    def _encode(self, text: str) -> Conditioning:
        tokenized = tokenize_weighted(parse_attention(text), self.encoders[0].tokenizer, self._matcher)
        per_encoder, pooled = [], None
        for encoder in self.encoders:
            chunks = []
            for index, chunk in enumerate(tokenized.chunks):
                hidden, chunk_pooled = self._encode_chunk(encoder, chunk)
                chunks.append(hidden)
                if encoder.pooled and index == 0:
                    pooled = chunk_pooled
            per_encoder.append(torch.cat(chunks, dim=1))
        return Conditioning(embeds=torch.cat(per_encoder, dim=-1).to(self.dtype),
                            pooled=pooled.to(self.dtype) if pooled is not None else None,
                            embeddings_used=tokenized.embeddings_used)

    def _encode_chunk(self, encoder: _Encoder, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = encoder.model
        device = model.device
        ids = torch.tensor([chunk_input_ids(chunk, encoder.tokenizer)], device=device)
        with _vectors_swapped_in(model, chunk, encoder.embedding_key):
            output = model(ids, output_hidden_states=True)
        states = output.hidden_states
        if encoder.sdxl:
            hidden = states[-min(self.clip_skip + 1, len(states) - 1)]
        else:
            hidden = model.final_layer_norm(states[-min(self.clip_skip, len(states) - 1)])
        weights = chunk_weights(chunk)
        if any(w != 1.0 for w in weights):
            hidden = _emphasised(hidden, torch.tensor(weights, device=device, dtype=hidden.dtype))
        pooled = getattr(output, "text_embeds", None) if encoder.pooled else None
        return hidden.to(model.dtype), pooled


def _emphasised(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis: scale each token's vector by its weight, then restore the chunk's mean.

    The mean is restored only where it means something. An encoder whose outputs are centred (a final
    LayerNorm without bias, as in freshly made test models) has a mean that is rounding noise: the
    ratio of two such means is arbitrary, and can flip the sign of every vector or overflow to inf.
    There only the weights apply, as in A1111's "No norm" emphasis mode.
    """
    original_mean = hidden.float().mean()
    weighted = hidden * weights[None, :, None]
    ratio = original_mean / weighted.float().mean()
    centred = original_mean.abs() < 1e-4 * hidden.float().abs().mean()
    if centred or not torch.isfinite(ratio) or ratio <= 0:
        return weighted
    return weighted * ratio.to(hidden.dtype)


@contextmanager
def _vectors_swapped_in(model, chunk: Chunk, key: str):
    """Replace the placeholder tokens' embeddings with an embedding's vectors, for one forward pass."""
    if not chunk.vectors:
        yield
        return
    token_embedding = model.get_input_embeddings()

    def swap(module, inputs, output):
        output = output.clone()
        for position, embedding in chunk.vectors:
            vectors = embedding.vectors[key][: 75 - position]
            start = 1 + position  # after the start token
            output[:, start:start + len(vectors)] = vectors.to(output.device, output.dtype)
        return output

    handle = token_embedding.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def pad_to_chunks(cond: Conditioning, chunks: int, empty: Conditioning) -> torch.Tensor:
    """Positive and negative conditioning must have the same length: pad with the empty prompt's chunk."""
    missing = chunks - cond.chunks
    if missing <= 0:
        return cond.embeds
    return torch.cat([cond.embeds, empty.embeds.repeat(1, missing, 1)], dim=1)


class StepConditioning:
    """A prompt and negative prompt over one sampling pass, with prompt editing and alternation.

    `pipeline_kwargs()` is what the pass starts with; `for_step(pipe, step)`
    gives the tensors the pipeline's step-end callback hands back so that
    step `step` (from 0) uses its own texts. Every entry is padded to the same
    number of chunks, since the pipeline joins the positive and negative
    batches once, before the loop.
    """

    def __init__(self, encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int, batch: int):
        from backend.prompts.schedule import prompt_schedule

        self.batch = batch
        self.positive = prompt_schedule(prompt, steps)
        self.negative = prompt_schedule(negative_prompt, steps)
        texts = {t for _, t in self.positive} | {t for _, t in self.negative}
        encoded = {t: encoder.encode(t) for t in texts}
        empty = encoder.encode("")
        chunks = max(c.chunks for c in encoded.values())
        self._embeds = {t: pad_to_chunks(c, chunks, empty) for t, c in encoded.items()}
        self._pooled = {t: c.pooled for t, c in encoded.items()}
        self.embeddings_used = sorted({name for c in encoded.values() for name in c.embeddings_used})
        self.sdxl = any(p is not None for p in self._pooled.values())

    @property
    def changes(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1

    def _texts(self, step: int) -> tuple[str, str]:
        from backend.prompts.schedule import text_at_step

        return text_at_step(self.positive, step), text_at_step(self.negative, step)

    def _rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.repeat(self.batch, *([1] * (tensor.ndim - 1)))

    def pipeline_kwargs(self) -> dict:
        positive, negative = self._texts(0)
        kwargs = {"prompt_embeds": self._rows(self._embeds[positive]),
                  "negative_prompt_embeds": self._rows(self._embeds[negative])}
        if self.sdxl:
            kwargs["pooled_prompt_embeds"] = self._rows(self._pooled[positive])
            kwargs["negative_pooled_prompt_embeds"] = self._rows(self._pooled[negative])
        return kwargs

    def callback_inputs(self) -> list[str]:
        """The tensors the step-end callback must see (and may replace)."""
        if not self.changes:
            return []
        return ["prompt_embeds", "add_text_embeds"] if self.sdxl else ["prompt_embeds"]

    def tensors(self, step: int, cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeds, pooled) of step `step` as the UNet takes them: with CFG, [negative rows, positive rows]."""
        positive, negative = self._texts(step)
        embeds, pooled = self._rows(self._embeds[positive]), self._rows(self._pooled[positive]) if self.sdxl else None
        if cfg:
            embeds = torch.cat([self._rows(self._embeds[negative]), embeds])
            if self.sdxl:
                pooled = torch.cat([self._rows(self._pooled[negative]), pooled])
        return embeds, pooled

    def for_step(self, pipe, step: int) -> dict:
        embeds, pooled = self.tensors(step, pipe.do_classifier_free_guidance)  # the pipeline holds [neg, pos]
        out = {"prompt_embeds": embeds}
        if self.sdxl:
            out["add_text_embeds"] = pooled
        return out
