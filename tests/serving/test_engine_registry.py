"""Adapters load only when their bytes match the version's SHA-256, only as safetensors,
and live in an LRU bounded by bytes that evicts with peft's delete_adapter."""

import dataclasses
import logging
import pickle
from pathlib import Path

import pytest
import torch

from serving.engine.registry import (
    AdapterIntegrityError,
    AdapterUnavailable,
    adapter_name_for,
)
from serving.engine.runner import ClassificationRow, classify_rows
from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION
from tests.serving.conftest import new_registry


def test_adapter_whose_bytes_do_not_match_the_version_sha256_is_refused_and_logged(
    registry, generation_adapters, caplog
):
    # Given a version row whose SHA-256 is not the stored file's (mallory swapped the file)
    base = registry.base("tiny-causal", TEXT_GENERATION)
    genuine = generation_adapters[0].ref
    tampered = dataclasses.replace(genuine, sha256="0" * 64)

    # When the engine is asked to serve it, it refuses and says so in the log
    with caplog.at_level(logging.ERROR), pytest.raises(AdapterIntegrityError) as refused:
        registry.ensure_adapters(base, [tampered])
    assert refused.value.code == "adapter_integrity"
    assert "integrity failure" in caplog.text and genuine.model_version_id in caplog.text
    # and nothing was loaded into the base
    assert base.adapters == {} and base.peft_model is None


def test_adapter_file_changed_after_publication_is_refused(registry, generation_adapters, tmp_path):
    ref = generation_adapters[1].ref
    copy = tmp_path / "adapter_model.safetensors"
    payload = bytearray(Path(ref.adapter_path).read_bytes())
    payload[-1] ^= 0xFF  # one flipped bit in the weights
    copy.write_bytes(bytes(payload))
    base = registry.base("tiny-causal", TEXT_GENERATION)
    with pytest.raises(AdapterIntegrityError):
        registry.ensure_adapters(base, [dataclasses.replace(ref, adapter_path=str(copy))])


def test_pickle_bearing_adapter_file_is_refused_even_with_a_matching_hash(
    registry, generation_adapters, tmp_path
):
    # Given mallory's pickle (it would run code on torch.load), hashed honestly
    import hashlib

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "adapter_model.safetensors"
    evil.write_bytes(pickle.dumps({"weights": Payload()}))
    ref = dataclasses.replace(
        generation_adapters[0].ref,
        adapter_path=str(evil),
        sha256=hashlib.sha256(evil.read_bytes()).hexdigest(),
    )
    base = registry.base("tiny-causal", TEXT_GENERATION)
    with pytest.raises(AdapterUnavailable, match="not a valid safetensors"):
        registry.ensure_adapters(base, [ref])

    # and a .bin path is refused before anything is read
    torch_file = tmp_path / "adapter_model.bin"
    torch.save({"w": torch.zeros(1)}, torch_file)
    bin_ref = dataclasses.replace(ref, adapter_path=str(torch_file))
    with pytest.raises(AdapterUnavailable, match="Only safetensors"):
        registry.ensure_adapters(base, [bin_ref])
    assert base.adapters == {}


def test_lru_evicts_least_recently_used_adapters_by_bytes_with_delete_adapter(
    base_sources, generation_adapters
):
    refs = [a.ref for a in generation_adapters]  # ranks 4, 8, 12: 0.35, 0.70, 1.05 MB
    budget = 1_100_000  # room for the rank-12 adapter alone, or ranks 4 and 8 together
    registry = new_registry(base_sources, cache_bytes=budget)
    base = registry.base("tiny-causal", TEXT_GENERATION)

    registry.ensure_adapters(base, [refs[0]])
    registry.ensure_adapters(base, [refs[1]])
    assert list(base.adapters) == [
        adapter_name_for(refs[0].sha256),
        adapter_name_for(refs[1].sha256),
    ]
    registry.ensure_adapters(base, [refs[0]])  # used again: now the most recent

    # When the rank-12 adapter arrives, both older ones must go (least recent first)
    registry.ensure_adapters(base, [refs[2]])
    assert list(base.adapters) == [adapter_name_for(refs[2].sha256)]
    assert base.adapter_bytes <= budget
    # peft itself no longer holds them
    assert set(base.peft_model.peft_config) == {adapter_name_for(refs[2].sha256)}

    # When a smaller one comes back, only as much as needed is evicted
    registry.ensure_adapters(base, [refs[0]])
    assert list(base.adapters) == [adapter_name_for(refs[0].sha256)]
    registry.ensure_adapters(base, [refs[1]])
    assert list(base.adapters) == [
        adapter_name_for(refs[0].sha256),
        adapter_name_for(refs[1].sha256),
    ]
    assert set(base.peft_model.peft_config) == set(base.adapters)


def test_adapters_one_batch_needs_are_kept_even_over_budget(base_sources, generation_adapters):
    registry = new_registry(base_sources, cache_bytes=1)
    base = registry.base("tiny-causal", TEXT_GENERATION)
    refs = [a.ref for a in generation_adapters]
    registry.ensure_adapters(base, refs)
    assert len(base.adapters) == 3  # the batch runs; the next one evicts
    registry.ensure_adapters(base, refs[:1])
    assert list(base.adapters) == [adapter_name_for(refs[0].sha256)]


def test_classification_heads_with_different_label_counts_share_one_base(
    registry, base_sources, classification_adapters, tmp_path
):
    from serving.engine.synthetic import build_adapter
    from tests.serving.conftest import plain_base

    _, model = plain_base(base_sources, "minilm-l6", TEXT_CLASSIFICATION, ["yes", "no"])
    two_labels = build_adapter(
        model, TEXT_CLASSIFICATION, tmp_path / "two", seed=7, labels=["yes", "no"]
    )
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    three = classification_adapters[0].ref
    registry.ensure_adapters(base, [three, two_labels.ref])
    scores = classify_rows(
        base,
        [
            ClassificationRow(text="is it raining", adapter=two_labels.ref),
            ClassificationRow(text="charged twice", adapter=three),
        ],
    )
    assert set(scores[0]) == {"yes", "no"} and set(scores[1]) == set(three.labels)
    assert abs(sum(scores[0].values()) - 1) < 1e-5

    # A version whose label list does not fit its head is refused
    with pytest.raises(AdapterUnavailable, match="labels"):
        registry.ensure_adapters(base, [dataclasses.replace(three, labels=["a", "b"])])


def test_a_tampered_classifier_is_refused_before_its_head_kind_is_read_or_cached(
    registry, classification_adapters, tmp_path, caplog
):
    # Given mallory's swap: other (valid safetensors) bytes where alice's adapter was
    genuine = classification_adapters[0].ref
    swapped = tmp_path / "adapter_model.safetensors"
    swapped.write_bytes(Path(classification_adapters[1].ref.adapter_path).read_bytes())
    tampered = dataclasses.replace(genuine, adapter_path=str(swapped))

    # When the engine asks which head the version's adapter needs, it refuses and logs
    with caplog.at_level(logging.ERROR), pytest.raises(AdapterIntegrityError):
        registry.adapter_head(tampered)
    assert "adapter integrity failure" in caplog.text
    # and nothing was remembered under the version's SHA-256
    assert genuine.sha256 not in registry.heads
