"""Resolving a model to a directory and reading its sentence-transformers config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docpipe.embed import read_st_config, resolve_model_dir
from docpipe.errors import ConfigError


def write_model(root: Path, *, modules=None, pooling=None, st=None, prompts=None, config=None) -> Path:
    root.mkdir(parents=True)
    config = config or {"model_type": "bert", "hidden_size": 8, "max_position_embeddings": 512}
    (root / "config.json").write_text(json.dumps(config))
    if modules is not None:
        (root / "modules.json").write_text(
            json.dumps(
                [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (kind, path) in enumerate(modules)]
            )
        )
    if pooling is not None:
        (root / "1_Pooling").mkdir()
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if st is not None:
        (root / "sentence_bert_config.json").write_text(json.dumps(st))
    if prompts is not None:
        (root / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return root


ST_MODULES = [
    ("sentence_transformers.models.Transformer", ""),
    ("sentence_transformers.models.Pooling", "1_Pooling"),
]


def test_local_directory_is_used_as_is(tmp_path):
    assert resolve_model_dir(str(tmp_path), cache_dir=None) == tmp_path


@pytest.mark.parametrize("model", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_default_model_comes_from_its_wheel(model, minilm_dir):
    assert resolve_model_dir(model, cache_dir=None) == minilm_dir


def test_missing_local_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nope"), cache_dir=None)


def test_failed_download_says_to_pass_a_local_path(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def offline(**kwargs):
        calls.append(kwargs)
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConfigError, match=r"could not be downloaded.*local"):
        resolve_model_dir("BAAI/bge-small-en-v1.5", cache_dir=tmp_path)
    assert calls[0]["repo_id"] == "BAAI/bge-small-en-v1.5" and calls[0]["cache_dir"] == tmp_path


def test_no_modules_json_means_mean_pooling_without_normalize(tmp_path):
    config = read_st_config(write_model(tmp_path / "m"))
    assert config.pooling_modes == ("mean",) and not config.normalize
    assert config.max_tokens == 512 and config.dim == 8


def test_new_style_pooling_list_and_prompts(tmp_path):
    root = write_model(
        tmp_path / "m",
        modules=[*ST_MODULES, ("sentence_transformers.base.modules.normalize.Normalize", "2_Normalize")],
        pooling={"embedding_dimension": 8, "pooling_mode": ["cls", "mean"], "include_prompt": False},
        st={"max_seq_length": 1024, "do_lower_case": True},
        prompts={"prompts": {"classification": "classify: ", "query": ""}, "default_prompt_name": "classification"},
    )
    config = read_st_config(root)
    assert config.pooling_modes == ("cls", "mean") and config.dim == 16
    assert config.normalize and config.do_lower_case and not config.include_prompt
    assert config.max_tokens == 512  # capped by the position embeddings
    assert config.query_prompt is None  # an explicit empty query prompt beats the default
    assert config.document_prompt == "classify: "


@pytest.mark.parametrize(
    ("pooling", "modes"),
    [
        ({"pooling_mode_lasttoken": True}, ("lasttoken",)),
        ({"pooling_mode_weightedmean_tokens": True}, ("weightedmean",)),
        ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ("cls", "max")),
        ({"pooling_mode_mean_tokens": False}, ("mean",)),
    ],
)
def test_legacy_pooling_flags(tmp_path, pooling, modes):
    assert read_st_config(write_model(tmp_path / "m", modules=ST_MODULES, pooling=pooling)).pooling_modes == modes


def test_roberta_positions_leave_room_for_the_padding_offset(tmp_path):
    config = {"model_type": "xlm-roberta", "hidden_size": 8, "max_position_embeddings": 514, "pad_token_id": 1}
    assert read_st_config(write_model(tmp_path / "m", config=config)).max_tokens == 512


def test_modules_docpipe_cannot_run_are_refused(tmp_path):
    root = write_model(
        tmp_path / "m", modules=[*ST_MODULES, ("sentence_transformers.models.Dense", "2_Dense")], pooling={}
    )
    with pytest.raises(ConfigError, match="Dense"):
        read_st_config(root)
