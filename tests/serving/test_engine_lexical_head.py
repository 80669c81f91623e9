"""The engine serves a version's lexical head blended with its adapter, checked like the
adapter: SHA-256 first, then the strict safetensors parser, then its own shape checks."""

import dataclasses
import hashlib
import json
import logging
import random

import numpy as np
import pytest

from serving.engine.registry import AdapterIntegrityError, AdapterUnavailable
from serving.engine.runner import ClassificationRow, classify_rows
from serving.protocol import TEXT_CLASSIFICATION, AdapterRef
from tests.serving.conftest import LABELS
from training_worker.ml import lexical_head

TEXTS = [
    "I was charged twice for one invoice",
    "the app crashes when I open settings",
    "thank you, lovely support team",
    "refund my last payment please",
]


CUES = {
    "billing": ["billed", "twice", "refund", "invoice", "payment", "charged", "card"],
    "bug": ["crash", "error", "freeze", "button", "broken", "crashes", "settings"],
    "praise": ["great", "lovely", "thanks", "love", "thank", "you", "team"],
}


def head_payload(labels=LABELS, weight: float = 0.5, rows_per_label: int = 12) -> tuple:
    """A lexical head fitted as the recipe fits one (terms shared by at least k rows)."""
    rng = random.Random(0)
    train = [
        (f"{' '.join(rng.sample(CUES[label], 4))} ticket {i}", label)
        for label in labels
        for i in range(rows_per_label)
    ]
    ids = {label: i for i, label in enumerate(labels)}
    head = lexical_head.fit(
        [text for text, _ in train], [ids[label] for _, label in train],
        n_labels=len(labels), seed=0,
    )  # fmt: skip
    head = dataclasses.replace(head, weight=weight)
    return head.to_bytes(), head


def write_head(folder, weight: float, labels=LABELS) -> tuple[str, str, lexical_head.LexicalHead]:
    payload, head = head_payload(labels, weight)
    path = folder / "lexical_head.safetensors"
    path.write_bytes(payload)
    return str(path), hashlib.sha256(payload).hexdigest(), head


def test_a_blended_version_is_served_as_its_weights_mix_beside_a_plain_one_in_one_batch(
    registry, classification_adapters, tmp_path
):
    plain = classification_adapters[0].ref
    path, sha256, head = write_head(tmp_path, weight=0.3)
    blended = dataclasses.replace(plain, lexical_head_path=path, lexical_head_sha256=sha256)
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    registry.ensure_adapters(base, [plain, blended])

    rows = [ClassificationRow(text=t, adapter=r) for r in (plain, blended) for t in TEXTS]
    scores = classify_rows(base, rows)
    adapter = np.array([[s[label] for label in LABELS] for s in scores[: len(TEXTS)]])
    served = np.array([[s[label] for label in LABELS] for s in scores[len(TEXTS) :]])

    np.testing.assert_allclose(served, 0.3 * adapter + 0.7 * head.predict_proba(TEXTS), atol=1e-6)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(served, adapter)
    # The head counts toward the adapter cache's bytes.
    assert base.adapter_bytes == sum(a.nbytes for a in base.adapters.values()) + head.nbytes


def test_a_lexical_head_whose_bytes_do_not_match_the_version_is_refused_and_logged(
    registry, classification_adapters, tmp_path, caplog
):
    path, _, _ = write_head(tmp_path, weight=0.5)
    ref = dataclasses.replace(
        classification_adapters[1].ref, lexical_head_path=path, lexical_head_sha256="0" * 64
    )
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    with caplog.at_level(logging.ERROR), pytest.raises(AdapterIntegrityError) as refused:
        registry.ensure_adapters(base, [ref])
    assert refused.value.code == "adapter_integrity"
    assert "lexical head integrity failure" in caplog.text


@pytest.mark.parametrize(
    ("payload", "name", "message"),
    [
        (b"\x80\x04not a safetensors file", "lexical_head.safetensors", "refused"),
        (b"{}", "lexical_head.pkl", "Only safetensors"),
    ],
)
def test_a_lexical_head_that_is_not_one_is_refused_even_with_a_matching_hash(
    registry, classification_adapters, tmp_path, payload, name, message
):
    path = tmp_path / name
    path.write_bytes(payload)
    ref = dataclasses.replace(
        classification_adapters[2].ref,
        lexical_head_path=str(path),
        lexical_head_sha256=hashlib.sha256(payload).hexdigest(),
    )
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    with pytest.raises(AdapterUnavailable, match=message):
        registry.ensure_adapters(base, [ref])


def test_a_lexical_head_for_another_label_count_is_refused(
    registry, classification_adapters, tmp_path
):
    path, sha256, _ = write_head(tmp_path, weight=0.5, labels=["billing", "bug"])
    ref = dataclasses.replace(
        classification_adapters[3].ref, lexical_head_path=path, lexical_head_sha256=sha256
    )
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    with pytest.raises(AdapterUnavailable, match="lexical head has 2 labels"):
        registry.ensure_adapters(base, [ref])


def test_a_head_written_before_rare_terms_were_dropped_is_refused_and_logged(
    registry, classification_adapters, tmp_path, caplog
):
    # Given a version whose head is of format 1 (every training term kept)
    from safetensors.numpy import load, save

    from training_worker.ml.safe_weights import validate_safetensors_bytes

    payload, _ = head_payload()
    metadata = dict(validate_safetensors_bytes(payload).metadata)
    config = json.loads(metadata["config"])
    del config["min_training_rows"]
    legacy = save(load(payload), metadata={**metadata, "format_version": "1",
                                           "config": json.dumps(config)})  # fmt: skip
    path = tmp_path / "lexical_head.safetensors"
    path.write_bytes(legacy)
    ref = dataclasses.replace(
        classification_adapters[2].ref,
        lexical_head_path=str(path),
        lexical_head_sha256=hashlib.sha256(legacy).hexdigest(),
    )
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)

    # When the engine is asked to serve it, it refuses: not the adapter alone in its place
    with caplog.at_level(logging.ERROR), pytest.raises(AdapterUnavailable) as refused:
        registry.ensure_adapters(base, [ref])
    assert refused.value.code == "adapter_unavailable"
    assert "format 1" in str(refused.value) and "Train the version again" in str(refused.value)
    assert "outdated lexical head" in caplog.text
    assert all(not adapter.lexical for adapter in base.adapters.values())


def test_the_wire_form_of_a_ref_carries_its_lexical_head():
    ref = AdapterRef(
        model_version_id="v", sha256="a" * 64, adapter_path="x.safetensors",
        config_path="c.json", labels=["a", "b"], lexical_head_path="l.safetensors",
        lexical_head_sha256="b" * 64,
    )  # fmt: skip
    assert AdapterRef.from_dict(dataclasses.asdict(ref)) == ref
    legacy = {k: v for k, v in dataclasses.asdict(ref).items() if not k.startswith("lexical")}
    assert AdapterRef.from_dict(legacy).lexical_head_path == ""


LONG = (
    "hello there, this note rambles about nothing in particular for a good while before "
    "it finally says that the app crashes on start and the invoice was charged twice"
)


def test_each_row_is_cut_to_its_versions_max_seq_length_as_its_evaluation_cut_it(
    registry, base_sources, classification_adapters
):
    from training_worker.ml import evaluation, inference

    built = classification_adapters[0]
    short = dataclasses.replace(built.ref, max_seq_length=8)
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    registry.ensure_adapters(base, [built.ref, short])

    mixed = classify_rows(
        base, [ClassificationRow(text=LONG, adapter=short), ClassificationRow(LONG, built.ref)]
    )
    alone = classify_rows(base, [ClassificationRow(text=LONG, adapter=short)])

    # A row keeps its own limit inside a batch of rows with other limits
    assert mixed[0] == pytest.approx(alone[0], abs=1e-5)
    assert mixed[0] != pytest.approx(mixed[1], abs=1e-3)
    # and reads what the recipe's evaluation read at that max_seq_length
    model, tokenizer = inference.load_adapter_model(
        base_sources["minilm-l6"], built.directory, TEXT_CLASSIFICATION, LABELS
    )
    for limit, served in ((8, mixed[0]), (256, mixed[1])):
        scored = evaluation.predict_class_probabilities(model, tokenizer, [LONG], limit, "cpu")
        assert [served[label] for label in LABELS] == pytest.approx(scored[0].tolist(), abs=1e-5)
