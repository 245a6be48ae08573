"""The torch backend reproduces sentence-transformers, and the model directory drives pooling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from docpipe.embed import read_st_config
from docpipe.embed.pooling import pool_numpy, pool_torch
from docpipe.embed.torch_backend import TorchEmbedder

POOLING_MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]

LONG = (
    "The pipeline parses each document, splits it into chunks that fit the model, embeds the chunks "
    "in length-sorted micro-batches and writes the vectors to Postgres with binary COPY. "
) * 12  # ~400 tokens: truncated at 256


def varied_texts() -> list[str]:
    """~50 texts: empty, one word, sentences, >256-token paragraphs, several scripts and emoji."""
    base = [
        "",
        "x",
        "Hello, world!",
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "東京は日本の首都であり、世界最大の都市圏を持つ。",
        "北京是中华人民共和国的首都。",
        "مرحبا بالعالم، هذا نص تجريبي باللغة العربية.",
        "Ελληνικά: γρήγορη καφέ αλεπού.",
        "Emoji test 🚀🔥 with naïve café résumé façade.",
        "def f(x):\n    return x ** 2  # squares\n",
        "| region | revenue |\n|---|---|\n| north | 12.4M |",
        "   leading and trailing whitespace   ",
        "UPPER CASE SHOUTING TEXT",
        "tab\tseparated\tvalues\nand new lines",
        LONG,
        LONG.upper(),
        "Ünïcödé " * 100,
    ]
    sentences = [
        f"Document {i} discusses topic {i % 7} with {i * 3} examples and a conclusion about item {i}." * (1 + i % 3)
        for i in range(30)
    ]
    return base + sentences


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return varied_texts()


@pytest.fixture(scope="module")
def minilm_vectors(minilm_dir, texts) -> np.ndarray:
    return fp32_embedder(minilm_dir).embed(texts)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def st_encode(model_dir: Path, texts: list[str], kind: str = "encode") -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return getattr(model, kind)(texts, batch_size=16, convert_to_numpy=True)


def fp32_embedder(model_dir: Path) -> TorchEmbedder:
    return TorchEmbedder(model_dir, read_st_config(model_dir), dtype="fp32", device="cpu", micro_batch_tokens=4096)


def variant_dir(minilm_dir: Path, target: Path, *, pooling: dict, modules: list[str], prompts=None) -> Path:
    """A copy of MiniLM (weights symlinked) with its own pooling, module list and prompts."""
    target.mkdir()
    for path in minilm_dir.iterdir():
        if path.is_file() and path.name not in ("modules.json", "config_sentence_transformers.json"):
            (target / path.name).symlink_to(path)
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling}))
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
    (target / "modules.json").write_text(
        json.dumps(
            [
                {"idx": i, "name": str(i), "path": paths[m], "type": f"sentence_transformers.models.{m}"}
                for i, m in enumerate(modules)
            ]
        )
    )
    if prompts is not None:
        (target / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return target


def test_minilm_config(minilm_dir):
    config = read_st_config(minilm_dir)
    assert config.pooling_modes == ("mean",)
    assert config.normalize
    assert config.max_seq_length == 256
    assert config.max_tokens == 256
    assert config.dim == 384
    assert config.query_prompt is None and config.document_prompt is None


def test_fp32_matches_sentence_transformers(minilm_dir, texts, minilm_vectors):
    assert minilm_vectors.dtype == np.float32 and minilm_vectors.shape == (len(texts), 384)
    assert cosines(minilm_vectors, st_encode(minilm_dir, texts)).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(minilm_vectors, axis=1), 1.0, atol=1e-5)


def test_config_drives_pooling_cls_without_normalize(minilm_dir, tmp_path, texts, minilm_vectors):
    model_dir = variant_dir(
        minilm_dir,
        tmp_path / "cls",
        pooling={"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
        modules=["Transformer", "Pooling"],
    )
    config = read_st_config(model_dir)
    assert config.pooling_modes == ("cls",) and not config.normalize
    sample = texts[::3]
    ours = fp32_embedder(model_dir).embed(sample)
    assert cosines(ours, st_encode(model_dir, sample)).min() >= 0.9999
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)
    assert cosines(ours, minilm_vectors[::3]).mean() < 0.99  # really not mean pooling


def test_prompts_match_encode_query_and_document(minilm_dir, tmp_path, texts):
    prompts = {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": None}
    model_dir = variant_dir(
        minilm_dir,
        tmp_path / "prompted",
        pooling={"pooling_mode": "mean", "include_prompt": False},
        modules=["Transformer", "Pooling", "Normalize"],
        prompts=prompts,
    )
    config = read_st_config(model_dir)
    assert (config.query_prompt, config.document_prompt, config.include_prompt) == ("query: ", "passage: ", False)
    embedder = fp32_embedder(model_dir)
    docs = texts[:12:2]
    assert cosines(embedder.embed(docs), st_encode(model_dir, docs, "encode_document")).min() >= 0.9999
    queries = np.stack([embedder.embed_query(q) for q in docs])
    assert cosines(queries, st_encode(model_dir, docs, "encode_query")).min() >= 0.9999


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_twins_match_sentence_transformers(mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = np.random.default_rng(POOLING_MODES.index(mode))
    hidden = rng.normal(size=(5, 9, 8)).astype(np.float32)
    mask = np.zeros((5, 9), dtype=np.int64)
    for row, length in enumerate([9, 1, 4, 7, 2]):  # right padding, as the embedders pad
        mask[row, :length] = 1
    reference = Pooling(8, pooling_mode=mode)(
        {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    )["sentence_embedding"].numpy()
    np.testing.assert_allclose(pool_numpy(hidden, mask, [mode]), reference, rtol=1e-5, atol=1e-6)
    ours = pool_torch(torch.from_numpy(hidden), torch.from_numpy(mask), [mode]).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
