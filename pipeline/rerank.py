"""Cross-encoder reranking: score (query, passage) pairs with a sequence-classification model.

Scores: a model with one output gives its raw logit (higher is more relevant;
not squashed, so scores are comparable across calls but not probabilities).
A model with two or more outputs gives the softmax probability of its last
class, which is "relevant" in the binary rerankers this targets.
Pairs are truncated to ``max_length`` tokens (longest side first), sorted by
length and packed into micro-batches of ``batch_tokens`` padded tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from docpipe.config import RerankConfig
from docpipe.embed.batching import pack_micro_batches, pad_rows
from docpipe.embed.oom import is_cuda_oom, run_with_oom_split
from docpipe.embed.runtime import resolve_device, use_all_cpus_for_torch
from docpipe.embed.st_config import resolve_model_dir

log = logging.getLogger(__name__)


@runtime_checkable
class Reranker(Protocol):
    """Scores passages against a query; higher is more relevant."""

    name: str

    def score(self, query: str, texts: Sequence[str], *, deadline: float | None = None) -> list[float]:
        """One score per text, in input order; ``TimeoutError`` past ``deadline`` (time.monotonic())."""
        ...


class CrossEncoderReranker:
    """``AutoModelForSequenceClassification`` over tokenized pairs, under ``inference_mode``."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        max_length: int = 512,  # tokens per pair, specials included
        batch_tokens: int = 8192,  # padded tokens per forward pass
        trust_remote_code: bool = False,
        name: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name or str(model_dir)
        self.device = device
        self.batch_tokens = batch_tokens
        if device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
            use_all_cpus_for_torch()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                model_dir, dtype=dtype, trust_remote_code=trust_remote_code
            )
            .to(device)
            .eval()
        )
        self.max_length = min(max_length, *_model_limits(self.model.config, self.tokenizer))
        self.pad_id = self.tokenizer.pad_token_id or 0

    def __repr__(self) -> str:
        return f"<CrossEncoderReranker {self.name} on {self.device}, max {self.max_length} tokens>"

    def score(self, query: str, texts: Sequence[str], *, deadline: float | None = None) -> list[float]:
        """One score per text; checks ``deadline`` (time.monotonic()) before each micro-batch, so a
        call stops within one forward pass of it (Celery's threads pool ignores task time limits)."""
        if isinstance(texts, str):
            raise TypeError("score() takes a sequence of texts, not one string")
        if not len(texts):
            return []
        features = self.tokenizer([query] * len(texts), list(texts), truncation=True, max_length=self.max_length)
        rows = [
            {key: features[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in features}
            for i in range(len(texts))
        ]
        scores = np.empty(len(texts), dtype=np.float32)
        done = 0
        for batch in pack_micro_batches([len(row["input_ids"]) for row in rows], self.batch_tokens):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"rerank stopped at its time limit after scoring {done} of {len(texts)} passages")
            done += len(batch)
            scores[batch] = run_with_oom_split(
                self._score_rows,
                [rows[i] for i in batch],
                is_oom=is_cuda_oom,
                tokens_of=lambda row: len(row["input_ids"]),
            )
        return scores.tolist()

    def _score_rows(self, rows: Sequence[dict[str, list[int]]]) -> np.ndarray:
        import torch

        padded = {
            key: pad_rows([row[key] for row in rows], self.pad_id if key == "input_ids" else 0) for key in rows[0]
        }
        inputs = {key: torch.from_numpy(array).to(self.device) for key, array in padded.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
            if logits.shape[-1] == 1:
                return logits[:, 0].cpu().numpy()
            return logits.softmax(dim=-1)[:, -1].cpu().numpy()


def load_reranker(cfg: RerankConfig, *, cache_dir: Path) -> CrossEncoderReranker:
    """The configured cross-encoder: local directory, or downloaded from the hub into ``cache_dir``."""
    model_dir = resolve_model_dir(cfg.model, cache_dir=cache_dir)
    reranker = CrossEncoderReranker(
        model_dir,
        device=resolve_device(cfg.device),
        max_length=cfg.max_length,
        trust_remote_code=cfg.trust_remote_code,
        name=cfg.model,
    )
    log.info("reranker: %r", reranker)
    return reranker


def _model_limits(config: object, tokenizer: object) -> list[int]:
    """Length limits the model and tokenizer declare (transformers' huge 'unlimited' value dropped)."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] or [512]
