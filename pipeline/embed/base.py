"""The Embedder interface and the model-agnostic half every backend shares.

``PackedEmbedder`` tokenizes, sorts by length, packs micro-batches within a
padded-token budget, applies prompts and normalisation, and restores input
order; a backend only turns one padded micro-batch into pooled vectors.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from tokenizers import Encoding, Tokenizer

from docpipe.embed.batching import pack_micro_batches, pad_rows
from docpipe.embed.pooling import l2_normalize, prompt_excluded
from docpipe.embed.st_config import StModelConfig
from docpipe.errors import ConfigError


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors; the batching code around it knows nothing about the model."""

    name: str  # model id or path as configured
    dim: int  # output dimension
    max_tokens: int  # longest input in tokens, special tokens included
    micro_batch_tokens: int  # padded tokens per forward pass
    special_tokens: int  # special tokens the tokenizer adds to one sequence
    backend: str  # "torch-fp32" | "torch-bf16" | "torch-fp16" | "onnx" | "onnx-int8"
    device: str  # "cpu" | "cuda"
    tokenizer: Tokenizer  # the fast tokenizer, without truncation or padding

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens per text: no special tokens, not truncated."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim) in input order; unit rows iff the model normalizes."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dim,) for a search query, with the model's query prompt when it has one."""
        ...


PooledRows = Callable[[], np.ndarray]  # a launched micro-batch's pooled rows, waited for when called


class PackedEmbedder:
    """Tokenize, pack by padded tokens, run micro-batches, restore order. Subclasses run the model."""

    backend: str
    device: str
    in_flight: int = 0  # micro-batches launched ahead of the one being collected (an accelerator's queue)

    def __init__(self, st_config: StModelConfig, *, name: str, micro_batch_tokens: int) -> None:
        self.st_config = st_config
        self.name = name
        self.dim = st_config.dim
        self.max_tokens = st_config.max_tokens
        self.micro_batch_tokens = micro_batch_tokens  # padded tokens per forward pass
        self.tokenizer, self.pad_id = load_fast_tokenizer(st_config)
        self.special_tokens = self.tokenizer.num_special_tokens_to_add(False)
        self._encoder = Tokenizer.from_str(self.tokenizer.to_str())  # the same, truncating
        self._encoder.enable_truncation(self.max_tokens)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.backend} on {self.device}, dim {self.dim}>"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encodings = _encode_batch(self.tokenizer, self._cased(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self.st_config.document_prompt)

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([text], self.st_config.query_prompt)[0]

    def _embed(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        inputs = [prompt + t for t in texts] if prompt else list(texts)
        encodings = _encode_batch(self._encoder, self._cased(inputs))
        prompt_length = self._prompt_length(prompt) if prompt and not self.st_config.include_prompt else 0
        lengths = [len(e.ids) for e in encodings]
        launched: deque[tuple[list[int], PooledRows]] = deque()
        for batch in pack_micro_batches(lengths, self.micro_batch_tokens):
            launched.append((batch, self._launch_micro_batch([encodings[i] for i in batch], prompt_length)))
            while len(launched) > self.in_flight:
                done, rows = launched.popleft()
                out[done] = rows()
        for done, rows in launched:
            out[done] = rows()
        return l2_normalize(out) if self.st_config.normalize else out

    def _launch_micro_batch(self, encodings: Sequence[Encoding], prompt_length: int) -> PooledRows:
        """Start one micro-batch; here it runs to the end at once (a GPU backend returns before its kernels do)."""
        rows = self._embed_micro_batch(encodings, prompt_length)
        return lambda: rows

    def _embed_micro_batch(self, encodings: Sequence[Encoding], prompt_length: int) -> np.ndarray:
        """Pooled float32 rows for one micro-batch; the torch backend wraps this in OOM splitting."""
        return self._forward_pooled(*self._padded(encodings, prompt_length))

    def _padded(
        self, encodings: Sequence[Encoding], prompt_length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(batch, seq) int64 input ids, attention mask, token type ids and pooling mask (prompt left out)."""
        ids = pad_rows([e.ids for e in encodings], self.pad_id)
        mask = pad_rows([e.attention_mask for e in encodings], 0)
        type_ids = pad_rows([e.type_ids for e in encodings], 0)
        return ids, mask, type_ids, prompt_excluded(mask, prompt_length)

    def _forward_pooled(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray, pool_mask: np.ndarray
    ) -> np.ndarray:
        """(batch, seq) int64 inputs → (batch, dim) float32 pooled, not normalized."""
        raise NotImplementedError

    def _cased(self, texts: Sequence[str]) -> list[str]:
        return [t.lower() for t in texts] if self.st_config.do_lower_case else list(texts)

    def _prompt_length(self, prompt: str) -> int:
        """Prompt tokens at the start of a sequence, leading specials included, trailing ones not."""
        encoding = self._encoder.encode(self._cased([prompt])[0])
        return len(encoding.ids) - (1 if encoding.special_tokens_mask[-1:] == [1] else 0)


def _encode_batch(tokenizer: Tokenizer, texts: list[str], *, add_special_tokens: bool = True) -> list[Encoding]:
    """``encode_batch_fast`` (skips character offsets, which nothing here needs) where tokenizers has it."""
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
    return encode(texts, add_special_tokens=add_special_tokens)


def load_fast_tokenizer(st_config: StModelConfig) -> tuple[Tokenizer, int]:
    """The model's fast tokenizer with padding and truncation switched off, and its pad id.

    Reads tokenizer.json directly (no transformers import); converts a slow
    tokenizer through transformers only when the directory has no tokenizer.json.
    """
    directory = st_config.transformer_dir
    if (directory / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    else:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True).backend_tokenizer
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
        except Exception as exc:
            raise ConfigError(f"cannot load a fast tokenizer from {directory}: {exc}") from exc
    pad_id = _pad_id(tokenizer, directory)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, pad_id


def _pad_id(tokenizer: Tokenizer, directory: Path) -> int:
    """From the tokenizer's padding settings, else its pad token, else config.json, else 0."""
    if tokenizer.padding:
        return int(tokenizer.padding["pad_id"])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            token = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and (token_id := tokenizer.token_to_id(token)) is not None:
                return token_id
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return int(config.get("pad_token_id") or 0)
