"""Fusion, grouping and candidate depth: pure functions of the query side."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docpipe.config import SearchConfig
from docpipe.fusion import best_per_group, fuse_two, min_max, ranked, reciprocal_rank_fusion, score_fusion, z_scores
from docpipe.search import Candidates, Hit, candidate_depth, fuse, group_by_document


def hit(chunk_id: int, document_id: int, score: float) -> Hit:
    return Hit(chunk_id, document_id, "t", f"doc{document_id}", 1, 1, score)


def test_min_max_scales_to_unit_range() -> None:
    assert min_max({1: 2.0, 2: 4.0, 3: 3.0}) == {1: 0.0, 2: 1.0, 3: 0.5}
    assert min_max({1: 5.0}) == {1: 1.0}
    assert min_max({}) == {}


def test_z_scores() -> None:
    assert z_scores({1: 1.0, 2: 3.0}) == {1: -1.0, 2: 1.0}
    assert z_scores({1: 7.0}) == {1: 0.0}


def test_min_max_fusion_weighs_normalised_scores_and_floors_missing_ids() -> None:
    dense = {1: 0.9, 2: 0.5, 3: 0.1}  # normalised: 1, 0.5, 0
    keyword = {2: 12.0, 4: 2.0}  # normalised: 1, 0
    fused = score_fusion(dense, keyword, dense_weight=0.6, method="minmax")
    assert fused == pytest.approx({1: 0.6, 2: 0.6 * 0.5 + 0.4, 3: 0.0, 4: 0.0})
    assert [cid for cid, _ in ranked(fused)] == [2, 1, 3, 4]  # ties broken by id


def test_z_score_fusion_gives_a_missing_side_its_lowest_score() -> None:
    dense = {1: 0.8, 2: 0.6}  # z: 1, -1
    keyword = {1: 10.0, 3: 2.0}  # z: 1, -1
    fused = score_fusion(dense, keyword, dense_weight=0.5, method="zscore")
    assert fused == pytest.approx({1: 1.0, 2: -1.0, 3: -1.0})


def test_weighted_rrf() -> None:
    fused = reciprocal_rank_fusion([[1, 2], [2, 3]], k=60, weights=[0.75, 0.25])
    assert fused == pytest.approx({1: 0.75 / 61, 2: 0.75 / 62 + 0.25 / 61, 3: 0.25 / 62})
    by_scores = fuse_two({1: 0.9, 2: 0.8}, {2: 5.0, 3: 1.0}, method="rrf", dense_weight=0.75, rrf_k=60)
    assert by_scores == pytest.approx(fused)


def test_fuse_by_mode_and_by_document() -> None:
    candidates = Candidates(dense={1: 0.8, 2: 0.7}, keyword={3: 9.0, 2: 1.0}, document_of={1: 10, 2: 20, 3: 10})
    assert fuse(candidates, "vector", SearchConfig()) == {1: 0.8, 2: 0.7}
    assert fuse(candidates, "text", SearchConfig()) == {3: 9.0, 2: 1.0}
    assert set(fuse(candidates, "hybrid", SearchConfig())) == {1, 2, 3}
    assert set(fuse(candidates, "hybrid", SearchConfig(fusion="rrf"))) == {1, 2, 3}
    # document 10 is best on both sides (chunk 1 dense, chunk 3 BM25): it wins the document fusion
    by_doc = fuse(candidates, "hybrid", SearchConfig(), by_document=True)
    assert ranked(by_doc)[0][0] == 10
    assert best_per_group(candidates.dense, candidates.document_of) == {10: 0.8, 20: 0.7}


@given(
    st.dictionaries(st.integers(0, 50), st.floats(-1, 1), max_size=30),
    st.dictionaries(st.integers(0, 50), st.floats(0, 50), max_size=30),
    st.floats(0, 1),
    st.sampled_from(["zscore", "minmax"]),
)
def test_an_id_first_on_both_sides_is_first_after_fusion(dense, keyword, weight, method) -> None:
    fused = score_fusion(dense, keyword, dense_weight=weight, method=method)
    assert set(fused) == set(dense) | set(keyword)
    if dense and keyword:
        top_dense, top_kw = ranked(dense)[0][0], ranked(keyword)[0][0]
        if top_dense == top_kw:
            assert fused[top_dense] == pytest.approx(max(fused.values()))


def test_group_by_document_keeps_each_documents_best_chunk_in_order() -> None:
    hits = [hit(10, 1, 0.9), hit(20, 2, 0.8), hit(11, 1, 0.7), hit(30, 3, 0.6), hit(21, 2, 0.5)]
    assert [(h.chunk_id, h.document_id) for h in group_by_document(hits)] == [(10, 1), (20, 2), (30, 3)]


def test_candidate_depth_covers_k_grouping_and_rerank() -> None:
    config = SearchConfig(candidates=100)
    assert candidate_depth(10, config) == 100
    assert candidate_depth(500, config) == 500
    assert candidate_depth(100, config, group_by="document") == 300
    assert candidate_depth(10, config, rerank_candidates=150) == 150
    assert candidate_depth(10, config, mode="vector") == 10  # one side alone: no fusion depth
    assert candidate_depth(10, config, mode="text", group_by="document") == 30
