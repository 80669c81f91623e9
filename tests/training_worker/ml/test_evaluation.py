"""Metric functions checked against values computed by hand."""

import json

import numpy as np
import pytest

from training_worker.ml import evaluation

# 3 classes; hand-computed: confusion [[1,1,0],[0,2,0],[1,0,1]]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_matrix_counts_true_rows_by_predicted_columns():
    matrix = evaluation.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_accuracy_and_per_class_scores_match_hand_computation():
    assert evaluation.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    scores = evaluation.per_class_scores(Y_TRUE, Y_PRED, 3)
    assert scores["precision"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert scores["recall"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert scores["f1"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert scores["support"].tolist() == [2, 2, 2]


def test_macro_f1_averages_present_classes_only():
    assert evaluation.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Class 2 never occurs: averaged over classes 0 and 1 only (scikit-learn's convention).
    assert evaluation.macro_f1(np.array([0, 1]), np.array([0, 0]), 3) == pytest.approx(
        (2 / 3 + 0) / 2
    )


def test_vectorised_bootstrap_macro_f1_equals_the_plain_computation_per_resample():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    indices = rng.integers(0, 50, size=(20, 50))
    vectorised = evaluation._resampled_macro_f1(y_true, y_pred, 4, indices)
    plain = [evaluation.macro_f1(y_true[row], y_pred[row], 4) for row in indices]
    assert vectorised == pytest.approx(plain)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_interval_contains_point_estimate_and_is_seeded(metric):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    point = (
        evaluation.accuracy(y_true, y_pred)
        if metric == "accuracy"
        else evaluation.macro_f1(y_true, y_pred, 3)
    )
    low, high = evaluation.bootstrap_interval(metric, y_true, y_pred, 3, seed=5)
    assert low <= point <= high
    assert high - low < 0.25
    assert (low, high) == evaluation.bootstrap_interval(metric, y_true, y_pred, 3, seed=5)


def test_paired_lift_of_identical_predictions_is_exactly_zero():
    lift = evaluation.paired_bootstrap_lift("accuracy", Y_TRUE, Y_PRED, Y_PRED, 3)
    assert lift == {"metric": "accuracy", "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_lift_of_a_better_specialist_is_positive_with_positive_interval():
    y_true = np.array([0, 1, 2] * 30)
    perfect = y_true.copy()
    majority = np.zeros_like(y_true)
    lift = evaluation.paired_bootstrap_lift("accuracy", y_true, perfect, majority, 3, seed=1)
    assert lift["delta"] == pytest.approx(2 / 3)
    assert 0 < lift["ci_low"] <= lift["delta"] <= lift["ci_high"]


def test_exact_match_and_token_f1_normalise_case_and_punctuation():
    assert evaluation.exact_match(" Paris. ", "paris") == 1.0
    assert evaluation.exact_match("Lyon", "Paris") == 0.0
    # prediction "the big cat" vs reference "big cat sat": 2 common, p=2/3, r=2/3
    assert evaluation.token_f1("the big cat", "big cat sat") == pytest.approx(2 / 3)
    assert evaluation.token_f1("", "") == 1.0
    assert evaluation.token_f1("dog", "cat") == 0.0


def test_classification_report_has_the_documented_shape_and_is_json():
    labels = ["a", "b", "c"]
    report = evaluation.classification_report(
        Y_TRUE.tolist(), Y_PRED.tolist(), labels, 0, [0] * 6, "embedding", seed=0, resamples=200
    )
    assert set(report) == {
        "version", "task", "sealed_rows", "metrics", "intervals", "per_class",
        "confusion_matrix", "baselines", "strongest_baseline", "lift", "bootstrap",
        "sealed_evaluations",
    }  # fmt: skip
    assert report["version"] == 2
    assert report["sealed_evaluations"]["number"] == 1  # a first evaluation: uncorrected
    assert report["metrics"] == {"accuracy": 0.6667, "macro_f1": 0.6556}
    majority = report["baselines"]["majority_class"]
    assert (majority["accuracy"], majority["macro_f1"]) == (0.3333, 0.1667)
    assert majority["label"] == "Majority class" and majority["label_predicted"] == "a"
    assert majority["ci_low"] <= majority["value"] <= majority["ci_high"]
    assert majority["lift"] == report["lift"]["over_majority_class"]
    assert report["lift"]["over_majority_class"]["delta"] == 0.3333
    assert report["confusion_matrix"]["labels"] == labels
    assert report["bootstrap"] == {"resamples": 200, "seed": 0}
    json.dumps(report, allow_nan=False)
