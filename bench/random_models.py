"""A randomly initialised cross-encoder for tests and benchmarks on machines without a model hub."""

from __future__ import annotations

from pathlib import Path


def build_random_cross_encoder(
    target: Path, tokenizer_dir: Path, *, num_labels: int = 1, max_positions: int = 512, seed: int = 0
) -> Path:
    """Save a randomly initialised 2-layer BERT cross-encoder with `tokenizer_dir`'s tokenizer in `target`.

    For tests and benchmarks on machines without a model hub: it exercises the
    reranking mechanics and cost, never its quality.
    """
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, target / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(target)
    return target
