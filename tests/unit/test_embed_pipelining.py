"""Micro-batches launched ahead of collection (the CUDA path) give the same rows, in input order."""

from __future__ import annotations

import numpy as np
import pytest

from docpipe.embed import read_st_config
from docpipe.embed.base import PackedEmbedder


class RecordingEmbedder(PackedEmbedder):
    """A model-free backend: a row is a function of its tokens; launches and collections are recorded."""

    backend = "fake"
    device = "fake"

    def __init__(self, st_config, *, in_flight: int) -> None:
        super().__init__(st_config, name="fake", micro_batch_tokens=64)
        self.in_flight = in_flight
        self.events: list[tuple[str, int]] = []

    def _forward_pooled(self, ids, mask, type_ids, pool_mask) -> np.ndarray:
        features = np.stack([(ids * pool_mask).sum(1), pool_mask.sum(1), ids[:, 1]], axis=1).astype(np.float32)
        return np.tile(features, (1, self.dim // 3 + 1))[:, : self.dim]

    def _launch_micro_batch(self, encodings, prompt_length):
        number = sum(1 for kind, _ in self.events if kind == "launch")
        self.events.append(("launch", number))
        rows = super()._launch_micro_batch(encodings, prompt_length)

        def collect() -> np.ndarray:
            self.events.append(("collect", number))
            return rows()

        return collect


@pytest.fixture(scope="module")
def st_config(minilm_dir):
    return read_st_config(minilm_dir)


TEXTS = [("word " * n).strip() for n in (3, 40, 7, 25, 1, 12, 33, 5, 18, 9)]


def test_rows_are_the_same_and_in_input_order_with_one_micro_batch_in_flight(st_config) -> None:
    eager = RecordingEmbedder(st_config, in_flight=0)
    ahead = RecordingEmbedder(st_config, in_flight=1)
    np.testing.assert_array_equal(ahead.embed(TEXTS), eager.embed(TEXTS))
    launches = [n for kind, n in ahead.events if kind == "launch"]
    assert len(launches) > 2  # several micro-batches, so the order below means something
    # eager: each micro-batch is collected before the next is launched; ahead: the next is launched first
    assert eager.events == [(kind, n) for n in launches for kind in ("launch", "collect")]
    overlapped = [e for n in launches[1:] for e in (("launch", n), ("collect", n - 1))]
    assert ahead.events == [("launch", 0), *overlapped, ("collect", launches[-1])]


def test_cuda_pipelined_embeddings_match_the_cpu(minilm_dir) -> None:
    """On a CUDA machine: fp16 with pinned, non-blocking transfers and one micro-batch in flight vs fp32 on CPU."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from docpipe.embed.torch_backend import TorchEmbedder

    config = read_st_config(minilm_dir)
    texts = TEXTS * 20
    gpu = TorchEmbedder(minilm_dir, config, dtype="fp16", device="cuda", micro_batch_tokens=512)
    cpu = TorchEmbedder(minilm_dir, config, dtype="fp32", device="cpu", micro_batch_tokens=512)
    assert gpu.in_flight == 1
    cosines = (gpu.embed(texts) * cpu.embed(texts)).sum(axis=1)
    assert cosines.min() > 0.999
