"""The transformers/torch embedder: fp32, bf16 or fp16 weights, on CPU or CUDA.

On CPU, ``bf16`` loads the weights in bfloat16 (fast on CPUs with AVX512-BF16
or AMX); autocast is deliberately not used — it measured 3x slower than fp32.
Pooling always runs in float32.

On CUDA, a micro-batch's inputs go up from pinned host memory and its pooled
rows come back into pinned memory, both without blocking, and the next
micro-batch is padded and launched before the previous one is collected: the
GPU never waits for the host between micro-batches.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tokenizers import Encoding

from docpipe.embed.base import PackedEmbedder, PooledRows
from docpipe.embed.oom import is_cuda_oom, run_with_oom_split
from docpipe.embed.pooling import pool_torch
from docpipe.embed.runtime import cpu_has_bf16, use_all_cpus_for_torch
from docpipe.embed.st_config import StModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

TorchDtype = Literal["fp32", "bf16", "fp16"]


class TorchEmbedder(PackedEmbedder):
    """Runs a sentence-transformers model's transformer with ``AutoModel`` under ``inference_mode``."""

    def __init__(
        self,
        model_dir: Path,
        st_config: StModelConfig,
        *,
        dtype: TorchDtype,
        device: str,
        micro_batch_tokens: int,
        trust_remote_code: bool = False,
        name: str | None = None,
    ) -> None:
        import torch

        super().__init__(st_config, name=name or str(model_dir), micro_batch_tokens=micro_batch_tokens)
        if dtype == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bfloat16; using float16")
            dtype = "fp16"
        self.backend = f"torch-{dtype}"
        self.device = device
        if device == "cpu":
            use_all_cpus_for_torch()
            if dtype != "fp32" and not cpu_has_bf16():
                log.warning("%s on a CPU without native bfloat16 (AVX512-BF16/AMX) is likely slow", self.backend)
        self.model = load_auto_model(
            st_config.transformer_dir,
            dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype],
            device=device,
            trust_remote_code=trust_remote_code,
        )
        self._takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.in_flight = 1 if device == "cuda" else 0

    def _launch_micro_batch(self, encodings: Sequence[Encoding], prompt_length: int) -> PooledRows:
        if self.device != "cuda":
            return super()._launch_micro_batch(encodings, prompt_length)
        try:
            return self._launch_on_cuda(encodings, prompt_length)
        except Exception as exc:
            if not is_cuda_oom(exc):
                raise
        # Out of memory at launch: the synchronous path halves the micro-batch until it fits.
        return super()._launch_micro_batch(encodings, prompt_length)

    def _launch_on_cuda(self, encodings: Sequence[Encoding], prompt_length: int) -> PooledRows:
        """Queue one micro-batch on the GPU; the returned callable waits for its rows (float32, pinned)."""
        import torch

        ids, mask, type_ids, pool_mask = self._padded(encodings, prompt_length)

        def uploaded(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).pin_memory().to(self.device, non_blocking=True)

        inputs = {"input_ids": uploaded(ids), "attention_mask": uploaded(mask)}
        if self._takes_token_types:
            inputs["token_type_ids"] = uploaded(type_ids)
        with torch.inference_mode():
            pooled = pool_torch(self.model(**inputs)[0], uploaded(pool_mask), self.st_config.pooling_modes)
            rows = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
            rows.copy_(pooled, non_blocking=True)
        finished = torch.cuda.Event()
        finished.record()

        def collect() -> np.ndarray:
            finished.synchronize()
            return rows.numpy()

        return collect

    def _embed_micro_batch(self, encodings: Sequence[Encoding], prompt_length: int) -> np.ndarray:
        return run_with_oom_split(
            lambda part: super(TorchEmbedder, self)._embed_micro_batch(part, prompt_length),
            encodings,
            is_oom=is_cuda_oom,
        )

    def _forward_pooled(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray, pool_mask: np.ndarray
    ) -> np.ndarray:
        import torch

        def on_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, non_blocking=True)

        inputs = {"input_ids": on_device(ids), "attention_mask": on_device(mask)}
        if self._takes_token_types:
            inputs["token_type_ids"] = on_device(type_ids)
        with torch.inference_mode():
            hidden = self.model(**inputs)[0]
            pooled = pool_torch(hidden, on_device(pool_mask), self.st_config.pooling_modes)
            return pooled.cpu().numpy()


def load_auto_model(
    directory: Path,
    *,
    dtype: torch.dtype,
    device: str,
    trust_remote_code: bool,
    attention: Sequence[str] = ("sdpa", "eager"),
) -> PreTrainedModel:
    """``AutoModel`` in eval mode with the first attention implementation the model supports."""
    from transformers import AutoModel

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    for implementation in attention[:-1]:
        try:
            model = AutoModel.from_pretrained(directory, attn_implementation=implementation, **kwargs)
        except (ValueError, ImportError, NotImplementedError) as exc:
            log.info("%s attention unavailable for %s (%s)", implementation, directory, exc)
        else:
            return model.to(device).eval()
    model = AutoModel.from_pretrained(directory, attn_implementation=attention[-1], **kwargs)
    return model.to(device).eval()
