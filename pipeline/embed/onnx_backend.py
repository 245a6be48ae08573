"""The ONNX Runtime embedder: the transformer exported once (fp32, or fused then dynamic int8), pooling in numpy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from docpipe.embed.base import PackedEmbedder
from docpipe.embed.batching import pad_rows
from docpipe.embed.onnx_export import export_fp32, fuse_transformer, quantize_int8
from docpipe.embed.pooling import pool_numpy
from docpipe.embed.runtime import cpu_count
from docpipe.embed.st_config import StModelConfig
from docpipe.errors import ConfigError

log = logging.getLogger(__name__)

# Texts of different lengths, so the export is traced and checked with real padding.
_PROBE_TEXTS = ("Invoice 4711.", "The committee approved the revised budget after a long debate on Tuesday.")


class OnnxEmbedder(PackedEmbedder):
    """Runs the cached ONNX export of a model with ONNX Runtime (all graph optimizations on)."""

    def __init__(
        self,
        model_dir: Path,
        st_config: StModelConfig,
        *,
        quantize: bool,
        cache_dir: Path,
        micro_batch_tokens: int,
        device: str = "cpu",
        trust_remote_code: bool = False,
        name: str | None = None,
        threads: int | None = None,  # intra-op threads; default: the CPUs of this process
    ) -> None:
        import onnxruntime as ort

        super().__init__(st_config, name=name or str(model_dir), micro_batch_tokens=micro_batch_tokens)
        self.backend = "onnx-int8" if quantize else "onnx"
        self.device = device
        self._input_names = graph_inputs(st_config)
        probe = probe_inputs(self, self._input_names)
        path = exported_graph(self, cache_dir, probe=probe, trust_remote_code=trust_remote_code)
        if quantize:  # fused attention first, so that int8 reaches the Q/K/V projections too
            fused = fuse_transformer(
                path, cache_dir, name=self.name, transformer_dir=st_config.transformer_dir, probe=probe
            )
            path = quantize_int8(fused, cache_dir, name=self.name)
        self.model_path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_count()
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: the cores are shared with Postgres, the parse
        # workers and this process's claimer/writer threads, and a spinning pool slows them and itself
        # (measured under load: 200 abstracts 15.3 s spinning vs 10.6 s not; query p50 7.8 vs 4.1 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT warns about harmless provider placement
        self.session = ort.InferenceSession(str(path), options, providers=_providers(device))
        log.info("loaded %s (%s) on %s", path, self.backend, device)

    def _forward_pooled(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray, pool_mask: np.ndarray
    ) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        hidden = self.session.run(["last_hidden_state"], {k: feed[k] for k in self._input_names})[0]
        return pool_numpy(hidden, pool_mask, self.st_config.pooling_modes)


def graph_inputs(st_config: StModelConfig) -> list[str]:
    """The exported graph's inputs: token type ids only for models with more than one token type (BERT-likes)."""
    config = json.loads((st_config.transformer_dir / "config.json").read_text(encoding="utf-8"))
    names = ["input_ids", "attention_mask"]
    return [*names, "token_type_ids"] if config.get("type_vocab_size", 0) > 1 else names


def probe_inputs(embedder: PackedEmbedder, names: list[str]) -> dict[str, np.ndarray]:
    """A padded two-text batch that the export is traced and checked with."""
    encodings = embedder._encoder.encode_batch(list(_PROBE_TEXTS))
    arrays = {
        "input_ids": pad_rows([e.ids for e in encodings], embedder.pad_id),
        "attention_mask": pad_rows([e.attention_mask for e in encodings], 0),
        "token_type_ids": pad_rows([e.type_ids for e in encodings], 0),
    }
    return {k: arrays[k] for k in names}


def exported_graph(
    embedder: PackedEmbedder, cache_dir: Path, *, probe: dict[str, np.ndarray], trust_remote_code: bool
) -> Path:
    """The cached fp32 ONNX export of the embedder's transformer (exported now, checked on `probe`, if missing)."""
    return export_fp32(
        embedder.st_config.transformer_dir,
        cache_dir,
        name=embedder.name,
        probe=probe,
        trust_remote_code=trust_remote_code,
    )


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError("ONNX on CUDA needs onnxruntime-gpu; this onnxruntime has no CUDA provider")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
