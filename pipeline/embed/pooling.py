"""Pooling of token embeddings into one vector, as sentence-transformers' Pooling module does.

Two twins, kept side by side so they stay in step: ``pool_torch`` for the
torch backend (runs on the GPU) and ``pool_numpy`` for ONNX Runtime outputs.
Both work in float32 on right-padded batches; ``mask`` is the pooling mask
(the attention mask with prompt tokens zeroed when the model excludes them).
A unit test checks the twins agree for every mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_EPS = 1e-9  # sentence-transformers' clamp on token counts and weight sums


def prompt_excluded(mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """The pooling mask: ``mask`` with its first ``prompt_length`` positions zeroed."""
    if not prompt_length:
        return mask
    pooled = mask.copy()
    pooled[:, :prompt_length] = 0
    return pooled


def pool_numpy(hidden: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """(batch, seq, dim) token embeddings → (batch, dim * len(modes)) float32."""
    hidden = hidden.astype(np.float32, copy=False)
    weights = mask.astype(np.float32)[:, :, None]
    positions = np.arange(hidden.shape[1])
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[np.arange(len(hidden)), mask.argmax(axis=1)])
        elif mode == "max":
            out.append(np.where(weights > 0, hidden, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = np.maximum(weights.sum(axis=1), _EPS)
            out.append((hidden * weights).sum(axis=1) / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            weighted = weights * (positions + 1).astype(np.float32)[None, :, None]
            out.append((hidden * weighted).sum(axis=1) / np.maximum(weighted.sum(axis=1), _EPS))
        elif mode == "lasttoken":
            last = hidden.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
            out.append((hidden * weights)[np.arange(len(hidden)), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return np.concatenate(out, axis=-1).astype(np.float32, copy=False)


def pool_torch(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """(batch, seq, dim) token embeddings → (batch, dim * len(modes)) float32, on their device."""
    import torch

    hidden = hidden.float()
    weights = mask.unsqueeze(-1).float()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[rows, mask.int().argmax(dim=1)])
        elif mode == "max":
            out.append(hidden.masked_fill(weights == 0, float("-inf")).amax(dim=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = weights.sum(dim=1).clamp(min=_EPS)
            out.append((hidden * weights).sum(dim=1) / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32)
            weighted = weights * positions.view(1, -1, 1)
            out.append((hidden * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=_EPS))
        elif mode == "lasttoken":
            last = hidden.shape[1] - 1 - mask.int().flip(1).argmax(dim=1)
            out.append((hidden * weights)[rows, last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(out, dim=-1)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as ``torch.nn.functional.normalize`` (norms clamped at 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
