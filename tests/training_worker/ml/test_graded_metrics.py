"""Graded metrics: partial credit beside exact match, chosen by the shape of the answers."""

from __future__ import annotations

import numpy as np
import pytest

from training_worker.ml import evaluation, graded_metrics
from training_worker.ml.evaluation_report import read_evaluation
from training_worker.ml.graded_metrics import (
    CHARACTER_ERROR_RATE,
    CHRF,
    TOKEN_ERROR_RATE,
    character_error_rate,
    choose_graded_metric,
    chrf,
    edit_distance,
    strict_exact_match,
    token_error_rate,
)


def test_edit_distance_counts_insertions_deletions_and_substitutions():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["K", "AE", "T"], ["K", "AH", "T"]) == 1


def test_token_error_rate_gives_partial_credit_for_one_phoneme_off():
    assert token_error_rate("K AE T", "K AE T") == 0.0
    assert token_error_rate("K AH T", "K AE T") == pytest.approx(1 / 3)
    assert token_error_rate("k ae t", "K AE T") == 0.0  # normalised, as exact match is
    # A rambling answer costs the whole row, never more.
    assert token_error_rate("I am glad to help you with that today friend", "K AE T") == 1.0


def test_character_error_rate_on_one_word():
    assert character_error_rate("walked", "walked") == 0.0
    assert character_error_rate("walkt", "walked") == pytest.approx(2 / 6)
    assert character_error_rate("", "walked") == 1.0


def test_chrf_is_one_for_identity_and_counts_case_and_punctuation():
    reference = "Call me Ishmael."
    assert chrf(reference, reference) == pytest.approx(1.0)
    unpunctuated = chrf("call me ishmael", reference)
    assert 0.3 < unpunctuated < 1.0
    assert chrf("Call me Ishmael", reference) > unpunctuated  # the case was right
    assert chrf("", reference) == 0.0
    # Hand-checked: "ab" vs "abc" has n-grams of orders 1-2 on both sides.
    # order 1: P 2/2, R 2/3; order 2: P 1/1, R 1/2 -> P 1, R 7/12, F2 = 5PR/(4P+R).
    p, r = 1.0, (2 / 3 + 1 / 2) / 2
    assert chrf("ab", "abc") == pytest.approx(5 * p * r / (4 * p + r))


def test_metric_chosen_by_the_shape_of_the_training_completions():
    phonemes = [
        {"prompt": w, "completion": c}
        for w, c in [("cat", "K AE T"), ("dog", "D AO G"), ("sit", "S IH T")]
    ]
    verbs = [{"prompt": "walk", "completion": "walked"}, {"prompt": "go", "completion": "went"}]
    restoration = [
        {"prompt": "call me ishmael", "completion": "Call me Ishmael."},
        {"prompt": "it is not down on any map", "completion": "It is not down on any map."},
    ]
    prose = [
        {"prompt": f"q{i}", "completion": " ".join(f"word{i}x{j}" for j in range(60))}
        for i in range(3)
    ]
    assert choose_graded_metric(phonemes) is TOKEN_ERROR_RATE
    assert choose_graded_metric(verbs) is CHARACTER_ERROR_RATE
    assert choose_graded_metric(restoration) is CHRF
    assert choose_graded_metric(prose) is CHRF  # 180 kinds of token: not a symbol alphabet
    assert strict_exact_match(restoration) and not strict_exact_match(phonemes)


def test_strict_exact_match_compares_as_written():
    assert evaluation.exact_match("call me ishmael", "Call me Ishmael.") == 1.0
    assert evaluation.exact_match("call me ishmael", "Call me Ishmael.", strict=True) == 0.0
    assert evaluation.exact_match(" Call  me Ishmael. ", "Call me Ishmael.", strict=True) == 1.0


def test_lift_is_better_by_whichever_the_direction():
    assert TOKEN_ERROR_RATE.better_by(0.2, 0.5) == pytest.approx(0.3)
    assert CHRF.better_by(0.8, 0.5) == pytest.approx(0.3)
    specialist = np.array([0.0, 0.1, 0.2, 0.0] * 10)
    baseline = np.array([0.5, 0.6, 0.4, 0.7] * 10)
    lift = evaluation.paired_graded_lift(TOKEN_ERROR_RATE, specialist, baseline, 500, 0)
    assert lift["delta"] == pytest.approx(baseline.mean() - specialist.mean())
    assert 0 < lift["ci_low"] <= lift["delta"] <= lift["ci_high"]
    same = evaluation.paired_graded_lift(CHRF, specialist, specialist, 500, 0)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0
    low, high = evaluation.bootstrap_mean_interval(baseline, 500, 0)
    assert low <= baseline.mean() <= high


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    from training_worker.ml.base_models import build_tiny_causal_lm

    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), seed=0))


def test_generation_report_carries_the_graded_metric_for_every_baseline(tiny_causal):
    from peft import LoraConfig, TaskType, get_peft_model

    from training_worker.ml.base_models import load_tokenizer_and_model

    tokenizer, model = load_tokenizer_and_model(tiny_causal, None, "text-generation")
    adapter_model = get_peft_model(
        model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, target_modules=["q_proj"])
    ).eval()
    train = [{"prompt": f"spell {w}", "completion": w.upper()} for w in ("cat", "dog", "owl")]
    sealed = [{"prompt": "spell cat", "completion": "CAT"}, {"prompt": "spell emu",
              "completion": "EMU"}]  # fmt: skip
    raw = evaluation.generation_report(
        adapter_model, tokenizer, sealed, 64, "cpu", max_new_tokens=4, train_rows=train,
        seed=0, resamples=100,
    )  # fmt: skip
    report = read_evaluation(raw)
    graded = report.graded_metric
    # One word per completion: character error rate, chosen from the training rows.
    assert graded["name"] == "character_error_rate" and graded["higher_is_better"] is False
    assert raw["metrics"]["character_error_rate"] == graded["value"]
    assert graded["ci_low"] <= graded["value"] <= graded["ci_high"]
    for baseline in report.baselines:
        entry = baseline.extra["graded"]
        assert entry["metric"] == "character_error_rate"
        assert 0.0 <= entry["value"] <= 1.0 and entry["lift"]["metric"] == "character_error_rate"
        # The lift is the baseline's error minus the specialist's, on the same (both) rows.
        assert baseline.rows == len(sealed)
        assert entry["lift"]["delta"] == pytest.approx(
            entry["value"] - raw["metrics"]["character_error_rate"], abs=1e-3
        )
    strongest = graded["strongest_baseline"]
    values = [b.extra["graded"]["value"] for b in report.baselines]
    assert strongest["value"] == min(values)  # lower is better: the lowest error is strongest
    public = report.as_public_dict()
    assert public["graded_metric"] == graded
    assert all(b["graded"]["metric"] == "character_error_rate" for b in public["baselines"])
    assert public["exact_match_mode"] == "case and punctuation ignored"
    assert report.as_dict() == raw


def test_reports_without_a_graded_metric_read_as_none():
    report = read_evaluation(
        {"version": 2, "task": "text-generation", "metrics": {"exact_match": 0.5}}
    )
    assert report.graded_metric is None and report.as_public_dict()["graded_metric"] is None


def test_graded_metric_table_is_in_the_module_docstring():
    for metric in graded_metrics.GRADED_METRICS.values():
        assert metric.label.split(" ")[0].lower() in graded_metrics.__doc__.lower()
