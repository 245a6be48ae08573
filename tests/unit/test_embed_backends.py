"""Every backend against torch-fp32 on realistic chunks; the ONNX cache; backend auto-selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from docpipe.config import EmbedConfig
from docpipe.embed import Embedder, autoselect, build_embedder, load_embedder, read_st_config
from docpipe.embed.onnx_export import MODEL_FILE, publish_atomically

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def chunks() -> list[str]:
    """16 chunk-like texts of one to three paragraphs (some past 256 tokens, so truncated)."""
    paragraphs = autoselect._PARAGRAPHS
    return [" ".join(paragraphs[(i + k) % len(paragraphs)] for k in range(1 + i % 3)) for i in range(16)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def make(minilm_dir, cache_dir):
    st_config = read_st_config(minilm_dir)
    cfg = EmbedConfig(model=MODEL_ID, device="cpu", micro_batch_tokens=2048)
    built: dict[str, Embedder] = {}

    def make(backend: str) -> Embedder:
        if backend not in built:
            built[backend] = build_embedder(backend, st_config, cfg=cfg, device="cpu", cache_dir=cache_dir)
        return built[backend]

    return make


@pytest.fixture(scope="module")
def reference(make) -> np.ndarray:
    return make("torch-fp32").embed(chunks())


@pytest.mark.parametrize(
    ("backend", "min_mean", "min_each"),
    [
        ("torch-bf16", 0.999, 0.998),
        ("onnx", 0.9999, 0.9999),
        ("onnx-int8", 0.985, 0.95),
        ("openvino", 0.9999, 0.9999),
        ("openvino-bf16", 0.999, 0.998),  # fp32 kernels where the CPU has no bf16: the same bounds hold
    ],
)
def test_backend_close_to_fp32(make, reference, backend, min_mean, min_each):
    embedder = make(backend)
    assert isinstance(embedder, Embedder)
    assert (embedder.backend, embedder.device, embedder.dim) == (backend, "cpu", 384)
    vectors = embedder.embed(chunks())
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.mean() >= min_mean and cosines.min() >= min_each, (cosines.mean(), cosines.min())


@pytest.mark.parametrize("backend", ["torch-fp32", "onnx", "openvino"])
def test_order_preserved_across_packing(make, backend):
    embedder = make(backend)
    texts = [*chunks()[:6], "short", "", "a little longer text here"]
    together = embedder.embed(texts)
    reversed_order = embedder.embed(texts[::-1])[::-1]
    one_by_one = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, reversed_order, atol=1e-5)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_threads_embed_at_once_on_openvino(make):
    """Each thread runs its own infer request: concurrent calls neither block nor mix their batches."""
    from concurrent.futures import ThreadPoolExecutor

    embedder, texts = make("openvino"), chunks()
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda k: embedder.embed(texts[k:]), range(3)))
    for k, vectors in enumerate(results):
        np.testing.assert_allclose(vectors, expected[k:], atol=1e-5)


def signal_stack() -> tuple[int, int, int]:
    import ctypes

    from docpipe.embed.openvino_backend import _SignalStack

    stack = _SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    return stack.ss_sp or 0, stack.ss_flags, stack.ss_size


def test_loading_openvino_keeps_the_threads_signal_stack(minilm_dir, cache_dir):
    """OpenVINO's compile installs a signal stack it later frees; a signal then killed the process (SIGSEGV)."""
    before = signal_stack()
    cfg = EmbedConfig(model=MODEL_ID, device="cpu", backend="openvino")
    build_embedder("openvino", read_st_config(minilm_dir), cfg=cfg, device="cpu", cache_dir=cache_dir)
    assert signal_stack() == before


def test_shape_of_nothing_and_query(make):
    embedder = make("torch-fp32")
    assert embedder.embed([]).shape == (0, 384)
    query = embedder.embed_query("how do I configure replication?")
    assert query.shape == (384,)
    np.testing.assert_allclose(query, embedder.embed(["how do I configure replication?"])[0], atol=1e-6)
    with pytest.raises(TypeError):
        embedder.embed("one string is not a list of texts")


def test_token_counts(make):
    embedder = make("torch-fp32")
    assert (embedder.max_tokens, embedder.special_tokens) == (256, 2)
    long_text = " ".join(chunks()[2] for _ in range(3))
    counts = embedder.count_tokens(["hello world", "", long_text])
    assert counts[:2] == [2, 0]
    assert counts[2] > embedder.max_tokens  # not truncated
    assert counts[2] == len(embedder.tokenizer.encode(long_text, add_special_tokens=False).ids)


def test_onnx_export_is_cached_and_reused(make, minilm_dir, cache_dir):
    first = make("onnx")
    exported = first.model_path
    assert exported.name == MODEL_FILE and exported.parent.parent == cache_dir / "onnx"
    assert exported.parent.name.startswith("sentence-transformers--all-MiniLM-L6-v2-")
    stamp = exported.stat().st_mtime_ns
    again = build_embedder(
        "onnx", read_st_config(minilm_dir), cfg=EmbedConfig(model=MODEL_ID), device="cpu", cache_dir=cache_dir
    )
    assert again.model_path == exported and exported.stat().st_mtime_ns == stamp
    assert make("onnx-int8").model_path.parent != exported.parent
    assert not [p for p in (cache_dir / "onnx").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_publish_loses_race_gracefully(tmp_path):
    final = tmp_path / "onnx" / "model-abc"

    def build_while_another_process_wins(tmp_dir: Path) -> None:
        (tmp_dir / MODEL_FILE).write_bytes(b"ours")
        final.mkdir()
        (final / MODEL_FILE).write_bytes(b"theirs")

    path = publish_atomically(final, build_while_another_process_wins)
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in final.parent.iterdir()] == ["model-abc"]
    assert publish_atomically(final, lambda tmp: pytest.fail("rebuilt a published artifact")) == path


def test_auto_measures_once_then_reads_its_decision(cache_dir, monkeypatch):
    monkeypatch.setattr(autoselect, "sample_texts", lambda: chunks()[:6])  # keep the test quick
    monkeypatch.setattr(autoselect, "ROUNDS", 1)
    cfg = EmbedConfig(model=MODEL_ID, backend="auto", device="cpu")
    embedder = load_embedder(cfg, cache_dir=cache_dir)
    assert embedder.backend in autoselect.cpu_candidates()
    assert embedder.embed(["it works"]).shape == (1, 384)
    [decision_file] = (cache_dir / "embed-backend").iterdir()
    decision = json.loads(decision_file.read_text())
    assert decision["backend"] == embedder.backend
    assert decision["measured"]["torch-fp32"]["passed"]
    assert len(decision["measured"]["torch-fp32"]["rounds_texts_per_s"]) == 1
    assert decision["query_backend"] in autoselect.cpu_candidates()
    assert all(r["query_ms"] > 0 for r in decision["measured"].values() if "error" not in r)

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again despite a cached decision")

    monkeypatch.setattr(autoselect, "_time_interleaved", no_measuring)
    assert load_embedder(cfg, cache_dir=cache_dir).backend == embedder.backend
    for_queries = load_embedder(cfg, cache_dir=cache_dir, purpose="queries")
    assert for_queries.backend == decision["query_backend"]
    assert for_queries.embed_query("it works").shape == (384,)


def test_queries_get_the_backend_fastest_per_call() -> None:
    """Chunk batches and single queries rank the backends differently (bf16 leads batches, ONNX one query)."""
    report = {
        name: {"texts_per_s": rate, "rounds_texts_per_s": [rate], "query_ms": ms, "rounds_query_ms": [ms],
               "mean_cosine": cosine, "passed": True}
        for name, rate, ms, cosine in (
            ("torch-fp32", 35.7, 6.0, 1.0),
            ("torch-bf16", 91.8, 12.1, 0.99995),
            ("onnx", 68.5, 2.9, 1.0),
        )
    }  # fmt: skip
    assert autoselect.pick_backend(report) == "torch-bf16"
    assert autoselect.pick_backend(autoselect._as_query_rates(report)) == "onnx"


@pytest.mark.parametrize(
    ("speeds", "expected"),
    [
        ({"torch-fp32": 10, "torch-bf16": 20, "onnx-int8": 21}, "torch-bf16"),  # a near-tie goes to fidelity
        ({"torch-fp32": 10, "torch-bf16": 20, "onnx-int8": 30}, "onnx-int8"),  # clearly faster wins
        ({"torch-fp32": 10, "torch-bf16": 10.5, "onnx-int8": 9}, "torch-fp32"),
    ],
)
def test_pick_backend_prefers_fidelity_within_the_noise(speeds: dict[str, float], expected: str) -> None:
    cosine = {"torch-fp32": 1.0, "torch-bf16": 0.99995, "onnx-int8": 0.997}
    report = {n: {"texts_per_s": v, "mean_cosine": cosine[n], "passed": True} for n, v in speeds.items()}
    assert autoselect.pick_backend(report) == expected


def _measured(rounds: dict[str, list[float]]) -> dict[str, dict]:
    cosine = {"torch-fp32": 1.0, "torch-bf16": 0.99995, "onnx": 1.0, "onnx-int8": 0.997}
    return {
        name: {
            "texts_per_s": sorted(r)[len(r) // 2],
            "rounds_texts_per_s": r,
            "mean_cosine": cosine[name],
            "passed": True,
        }
        for name, r in rounds.items()
    }


@pytest.mark.parametrize(
    ("rounds", "incumbent", "expected"),
    [
        # int8 wins on the median, but not in every round: the incumbent stays
        ({"torch-fp32": [20, 20, 20], "onnx-int8": [40, 21, 40]}, "torch-fp32", "torch-fp32"),
        # clearly faster in every round: the choice changes
        ({"torch-fp32": [20, 20, 20], "onnx-int8": [40, 30, 40]}, "torch-fp32", "onnx-int8"),
        # no incumbent: the fastest (beyond the fidelity tolerance) wins on its median
        ({"torch-fp32": [20, 20, 20], "onnx-int8": [40, 21, 40]}, None, "onnx-int8"),
        # an incumbent the CPU can no longer run (not measured) does not count
        ({"torch-fp32": [20, 20, 20], "onnx-int8": [40, 21, 40]}, "torch-bf16", "onnx-int8"),
    ],
)
def test_a_choice_changes_only_on_clear_evidence(rounds, incumbent, expected) -> None:
    assert autoselect.pick_backend(_measured(rounds), incumbent=incumbent) == expected


def test_measurement_texts_are_chunk_length(make) -> None:
    counts = make("torch-fp32").count_tokens(autoselect.sample_texts())
    assert len(counts) == autoselect.SAMPLE_TEXTS
    assert 170 <= sum(counts) / len(counts) <= 240  # real chunks average about 210 tokens


def test_previous_decision_of_the_model_is_the_incumbent(tmp_path: Path) -> None:
    folder = tmp_path / autoselect.DECISION_DIR
    folder.mkdir()
    (folder / "my-model-aaaa.json").write_text(json.dumps({"backend": "onnx-int8"}))
    (folder / "other-model-cccc.json").write_text(json.dumps({"backend": "torch-bf16"}))
    assert autoselect.previous_choice(folder / "my-model-bbbb.json") == "onnx-int8"
    assert autoselect.previous_choice(folder / "new-model-bbbb.json") is None


def test_machine_wide_cache_by_default(tmp_path: Path, monkeypatch) -> None:
    from docpipe.config import Settings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings(data_dir=tmp_path / "a").model_cache_dir == tmp_path / "xdg" / "docpipe"
    assert Settings(data_dir=tmp_path / "b").model_cache_dir == tmp_path / "xdg" / "docpipe"  # not per data dir
    assert Settings(model_cache=tmp_path / "mine").model_cache_dir == tmp_path / "mine"


def test_pick_backend_never_picks_one_that_failed_the_quality_check() -> None:
    report = {
        "torch-fp32": {"texts_per_s": 10, "mean_cosine": 1.0, "passed": True},
        "onnx-int8": {"texts_per_s": 50, "mean_cosine": 0.95, "passed": False},
    }
    assert autoselect.pick_backend(report) == "torch-fp32"


@pytest.fixture(scope="module")
def corpus_chunks(corpus_dir: Path, minilm_dir: Path) -> list[str]:
    """About 200 real chunks of a few text-rich corpus PDFs, cut by docpipe's own chunker."""
    from tokenizers import Tokenizer

    from docpipe.chunk import chunk_blocks
    from docpipe.parse import parse_bytes

    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    names = [
        "pymupdf__tests__resources__test_4245.pdf",
        "pymupdf__tests__resources__cython.pdf",
        "pymupdf__tests__resources__test_4751.pdf",
    ]
    out: list[str] = []
    for name in names:
        parsed = parse_bytes((corpus_dir / "pdf" / name).read_bytes(), "application/pdf", max_pages=1000)
        out += [c.text for c in chunk_blocks(parsed.blocks, tokenizer, max_tokens=254, overlap_tokens=32)]
    return out[:200]


@pytest.mark.parametrize("backend", ["torch-bf16", "onnx-int8"])
def test_search_results_mostly_unchanged_against_fp32(make, corpus_chunks, backend) -> None:
    """Quality guard on real chunks: top-10 exact search per query, fast backend vs torch-fp32."""
    queries = [" ".join(text.split()[5:15]) for text in corpus_chunks[::10]]  # 20 queries from the chunks

    def top10(embedder: Embedder) -> list[set[int]]:
        docs = embedder.embed(corpus_chunks)
        return [set(np.argsort(-(docs @ embedder.embed_query(q)))[:10].tolist()) for q in queries]

    reference, fast = top10(make("torch-fp32")), top10(make(backend))
    overlap = float(np.mean([len(a & b) / 10 for a, b in zip(reference, fast, strict=True)]))
    print(f"\n{backend}: top-10 overlap with torch-fp32 over {len(queries)} queries = {overlap:.3f}")
    assert overlap >= 0.9
