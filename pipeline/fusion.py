"""Fusing the dense and BM25 rankings of one query: pure functions over {id: score} maps.

Score fusion (default): each side's scores are normalised over its own
candidates, z-scores (``zscore``) or min-max (``minmax``), and combined as
``w·dense + (1 − w)·bm25``. An id one side did not return gets that side's
lowest normalised score: it ranks at most as well as the worst candidate
there. Scores keep their margins (a runaway BM25 match stays ahead), which
rank fusion drops. ``rrf`` is weighted reciprocal rank fusion, ``w/(k + rank)``.
Which method and weight are defaults is measured, not assumed: README,
"Search quality".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np

Key = TypeVar("Key", int, str)
FusionMethod = Literal["zscore", "minmax", "rrf"]


def min_max(scores: Mapping[Key, float]) -> dict[Key, float]:
    """Scores scaled to [0, 1] over their own list (all 1.0 when they are equal)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {key: (s - low) / span if span > 0 else 1.0 for key, s in scores.items()}


def z_scores(scores: Mapping[Key, float]) -> dict[Key, float]:
    """(score − mean) / standard deviation over the list (all 0.0 when they are equal)."""
    if not scores:
        return {}
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    mean, std = float(values.mean()), float(values.std())
    return {key: (s - mean) / std if std > 0 else 0.0 for key, s in scores.items()}


def score_fusion(
    dense: Mapping[Key, float], keyword: Mapping[Key, float], *, dense_weight: float, method: FusionMethod = "zscore"
) -> dict[Key, float]:
    """w·norm(dense) + (1 − w)·norm(keyword); an id missing on one side gets that side's lowest score."""
    normalise = z_scores if method == "zscore" else min_max
    d, kw = normalise(dense), normalise(keyword)
    d_floor, kw_floor = min(d.values(), default=0.0), min(kw.values(), default=0.0)
    return {
        key: dense_weight * d.get(key, d_floor) + (1 - dense_weight) * kw.get(key, kw_floor)
        for key in d.keys() | kw.keys()
    }


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Key]], *, k: int = 60, weights: Sequence[float] | None = None
) -> dict[Key, float]:
    """score(id) = Σ w_i / (k + rank_i), rank from 1 (Cormack et al. 2009, weighted)."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[Key, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return scores


def fuse_two(
    dense: Mapping[Key, float], keyword: Mapping[Key, float], *, method: FusionMethod, dense_weight: float, rrf_k: int
) -> dict[Key, float]:
    """One fused score per id, by `method`."""
    if method == "rrf":
        rankings = [[key for key, _ in ranked(dense)], [key for key, _ in ranked(keyword)]]
        return reciprocal_rank_fusion(rankings, k=rrf_k, weights=[dense_weight, 1 - dense_weight])
    return score_fusion(dense, keyword, dense_weight=dense_weight, method=method)


def ranked(scores: Mapping[Key, float]) -> list[tuple[Key, float]]:
    """(id, score) best first; ties by id, so results are stable."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def best_per_group(scores: Mapping[int, float], group_of: Mapping[int, int]) -> dict[int, float]:
    """Group → its best member's score (max aggregation, e.g. chunks into documents)."""
    best: dict[int, float] = {}
    for key, score in scores.items():
        group = group_of[key]
        if score > best.get(group, float("-inf")):
            best[group] = score
    return best
