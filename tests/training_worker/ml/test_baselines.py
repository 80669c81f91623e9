"""Every baseline on tiny data, fitted on training rows only, and the typed report's reader."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import math
from types import SimpleNamespace

import pytest
import torch

from training_worker.ml import baselines, evaluation
from training_worker.ml.data import IGNORE_INDEX, EncodedExample
from training_worker.ml.evaluation_report import (
    REPORT_VERSION,
    BaselineResult,
    EvaluationReport,
    Lift,
    read_evaluation,
)

POSITIVE = ["great lovely film", "lovely great acting", "a great lovely story", "great fun"]
NEGATIVE = ["awful boring film", "boring awful acting", "an awful boring story", "awful mess"]
TRAIN = [{"text": t, "label": "pos"} for t in POSITIVE] + [
    {"text": t, "label": "neg"} for t in NEGATIVE
]
LABELS = ["neg", "pos"]


def test_classic_tfidf_logistic_regression_learns_a_separable_toy_set():
    predicted = baselines.classic_classifier_predictions(
        [row["text"] for row in TRAIN],
        [LABELS.index(row["label"]) for row in TRAIN],
        ["what a great lovely day", "so boring and awful"],
        seed=0,
    )
    assert predicted == [LABELS.index("pos"), LABELS.index("neg")]


def test_classic_baseline_never_sees_a_sealed_row():
    sealed = ["zyzzyva great lovely", "quixotry boring awful"]
    result = evaluation.classification_baselines(
        train_rows=TRAIN, sealed_texts=sealed, labels=LABELS, device="cpu",
        options=baselines.EvaluationOptions(generalist_llm_path=None), seed=0,
    )  # fmt: skip
    features = dict(result.classic_model.named_steps["features"].transformer_list)
    words = features["words"].vocabulary_
    chars = features["chars"].vocabulary_
    assert "great" in words and "lovely" in chars.keys() | words.keys()
    for token in ("zyzzyva", "quixotry"):  # only in sealed rows
        assert token not in words
        assert not any(token[:4] in gram for gram in chars)
    assert result.predictions[0].name == "classic_tfidf_logreg"
    assert result.predictions[0].predictions == [LABELS.index("pos"), LABELS.index("neg")]
    assert result.skipped == [
        {"name": "generalist_llm_zero_shot", "reason": "no generalist LLM is configured"}
    ]


def test_nearest_neighbour_returns_the_most_similar_training_completion():
    train_prompts = ["capital of France", "capital of Italy", "largest ocean"]
    train_completions = ["Paris", "Rome", "Pacific"]
    retrieved = baselines.nearest_neighbour_completions(
        train_prompts, train_completions, ["what is the capital of italy?", "the largest ocean"]
    )
    assert retrieved == ["Rome", "Pacific"]


def test_nearest_neighbour_only_ever_answers_with_training_completions():
    sealed_prompts = ["capital of Spain", "capital of France please"]
    retrieved = baselines.nearest_neighbour_completions(
        ["capital of France", "capital of Italy"], ["Paris", "Rome"], sealed_prompts
    )
    assert set(retrieved) <= {"Paris", "Rome"}
    assert "Madrid" not in retrieved  # the sealed answer it cannot know


def test_few_shot_examples_are_seeded_training_rows():
    train = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    first = baselines.few_shot_examples(train, 3, seed=7)
    assert first == baselines.few_shot_examples(train, 3, seed=7)
    assert len(first) == 3 and all(row in train for row in first)
    assert baselines.few_shot_examples(train, 0, seed=7) == []
    assert len(baselines.few_shot_examples(train[:2], 3, seed=7)) == 2


class FixedNextTokenModel(torch.nn.Module):
    """A real (tiny) causal LM whose next-token distribution ignores the context."""

    def __init__(self, probabilities: list[float]):
        super().__init__()
        self.register_buffer("log_probs", torch.log(torch.tensor(probabilities)))

    def forward(self, input_ids, attention_mask=None):
        logits = self.log_probs.expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=logits)


def test_length_normalised_likelihood_prefers_a_multi_token_label_a_sum_would_lose():
    # Tokens 1-3 spell the long label (p=0.25 each); token 4 is the one-token label (p=0.2).
    model = FixedNextTokenModel([0.05, 0.25, 0.25, 0.25, 0.2])
    prompt = [0, 0]
    long_label = EncodedExample([*prompt, 1, 2, 3], [IGNORE_INDEX] * 2 + [1, 2, 3])
    short_label = EncodedExample([*prompt, 4], [IGNORE_INDEX] * 2 + [4])
    tokenizer = SimpleNamespace(pad_token_id=0)
    examples = [long_label, short_label]
    summed = evaluation._sequence_log_likelihoods(model, tokenizer, examples, "cpu", 8)
    mean = evaluation._sequence_log_likelihoods(
        model, tokenizer, examples, "cpu", 8, per_token=True
    )
    assert summed == pytest.approx([3 * math.log(0.25), math.log(0.2)])
    assert mean == pytest.approx([math.log(0.25), math.log(0.2)])
    assert evaluation.pick_label_by_score(summed, 1, 2) == [1]  # the sum picks the short one
    assert evaluation.pick_label_by_score(mean, 1, 2) == [0]  # the mean picks the right one


def _report_with(*extra: evaluation.BaselinePredictions):
    y_true = [0, 0, 1, 1, 1, 0, 1, 0]
    specialist = [0, 0, 1, 1, 1, 0, 1, 1]
    return evaluation.classification_report(
        y_true, specialist, ["a", "b"], 0, [0, 1, 0, 1, 0, 1, 0, 1], "embedding_cosine",
        seed=0, resamples=200, baselines=list(extra),
    )  # fmt: skip


def test_strongest_baseline_is_the_best_scoring_one_with_its_lift():
    classic = evaluation.BaselinePredictions(
        "classic_tfidf_logreg", "tf-idf", [0, 0, 1, 1, 0, 0, 1, 1]
    )
    capped_llm = evaluation.BaselinePredictions("generalist_llm_zero_shot", "llm", [0, 1, 1])
    raw = _report_with(classic, capped_llm)
    report = read_evaluation(raw)
    assert [b.name for b in report.baselines] == [
        "majority_class", "generalist_zero_shot", "generalist_llm_zero_shot",
        "classic_tfidf_logreg",
    ]  # fmt: skip
    assert report.strongest_baseline.name == "classic_tfidf_logreg"
    assert report.strongest_baseline.value == 0.75
    assert report.strongest_baseline.display_name == "Classic: TF-IDF + logistic regression"
    assert raw["strongest_baseline"] == "classic_tfidf_logreg"
    assert raw["lift"]["over_strongest_baseline"]["baseline"] == "classic_tfidf_logreg"
    assert raw["lift"]["over_strongest_baseline"]["delta"] == pytest.approx(0.125)
    llm = report.baseline("generalist_llm_zero_shot")
    assert llm.rows == 3 and llm.value == pytest.approx(2 / 3, abs=1e-4)
    assert llm.lift.delta == pytest.approx(1 / 3, abs=1e-4)  # paired on its 3 rows only
    for baseline in report.baselines:
        assert baseline.ci_low <= baseline.value <= baseline.ci_high
        assert baseline.lift.ci_low <= baseline.lift.delta <= baseline.lift.ci_high


def test_report_round_trips_through_the_typed_reader():
    raw = _report_with()
    json.dumps(raw, allow_nan=False)
    report = read_evaluation(json.loads(json.dumps(raw)))
    assert report.version == REPORT_VERSION and not report.is_legacy
    assert report.as_dict() == raw
    assert report.extra == {"bootstrap": {"resamples": 200, "seed": 0}}


def test_version_one_reports_stay_readable_and_say_so():
    classification_v1 = {
        "task": "text-classification", "sealed_rows": 40,
        "metrics": {"accuracy": 0.9, "macro_f1": 0.88}, "intervals": {"accuracy": [0.8, 0.97]},
        "baselines": {
            "majority_class": {"accuracy": 0.4, "macro_f1": 0.2, "label": "billing"},
            "generalist_zero_shot": {"accuracy": 0.6, "macro_f1": 0.5, "method": "embedding"},
        },
        "lift": {
            "over_majority_class": {"metric": "accuracy", "delta": 0.5, "ci_low": 0.3,
                                    "ci_high": 0.6},
            "over_generalist_zero_shot": {"metric": "accuracy", "delta": 0.3, "ci_low": 0.1,
                                          "ci_high": 0.45},
        },
    }  # fmt: skip
    report = read_evaluation(classification_v1)
    assert report.is_legacy
    assert report.strongest_baseline.name == "generalist_zero_shot"
    assert report.strongest_baseline.value == 0.6
    assert report.strongest_baseline.lift == Lift("accuracy", 0.3, 0.1, 0.45)
    assert report.strongest_baseline.ci_low is None  # v1 stored no baseline intervals
    assert report.baseline("classic_tfidf_logreg") is None

    generation_v1 = {
        "task": "text-generation", "sealed_rows": 20,
        "metrics": {"exact_match": 0.5, "base_exact_match": 0.1, "token_f1": 0.6},
        "lift": {"loss_reduction": 1.2},
    }  # fmt: skip
    report = read_evaluation(generation_v1)
    assert report.is_legacy and report.strongest_baseline.name == "base_zero_shot"
    assert report.strongest_baseline.lift.delta == pytest.approx(0.4)
    assert report.strongest_baseline.lift.ci_low is None
    assert report.lift == {"loss_reduction": 1.2}
    assert read_evaluation(None) is None and read_evaluation({}) is None


def test_a_report_without_scored_baselines_has_no_strongest():
    report = EvaluationReport(
        task="text-classification", sealed_rows=0, metrics={},
        baselines=[BaselineResult(name="x", method="", metric="accuracy", value=None)],
    )  # fmt: skip
    assert report.strongest_baseline is None
    assert report.as_dict()["strongest_baseline"] is None


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    from training_worker.ml.base_models import build_tiny_causal_lm

    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), seed=0))


def test_llm_generalist_scores_capped_rows_zero_shot(tiny_causal):
    sealed = [f"text number {i} great" for i in range(5)]
    result = evaluation.classification_baselines(
        train_rows=TRAIN, sealed_texts=sealed, labels=LABELS, device="cpu",
        options=baselines.EvaluationOptions(
            generalist_llm_path=tiny_causal, generalist_llm_name="tiny", generalist_llm_max_rows=3
        ),
        seed=0,
    )  # fmt: skip
    llm = result.predictions[1]
    assert llm.name == "generalist_llm_zero_shot" and llm.label == "Generalist: tiny, zero-shot"
    assert len(llm.predictions) == 3 and set(llm.predictions) <= {0, 1}
    assert "mean per-token log-likelihood" in llm.method
    assert result.llm_seconds_per_row > 0 and result.skipped == []


def test_generation_report_scores_every_baseline_from_training_rows(tiny_causal):
    from peft import LoraConfig, TaskType, get_peft_model

    from training_worker.ml.base_models import load_tokenizer_and_model

    tokenizer, model = load_tokenizer_and_model(tiny_causal, None, "text-generation")
    adapter_model = get_peft_model(
        model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, target_modules=["q_proj"])
    ).eval()
    train = [{"prompt": f"add {i} and 1:", "completion": f" {i + 1}"} for i in range(6)]
    sealed = [{"prompt": "add 40 and 1:", "completion": " 41"}, {"prompt": "add 2 and 1:",
              "completion": " 3"}]  # fmt: skip
    raw = evaluation.generation_report(
        adapter_model, tokenizer, sealed, 64, "cpu", max_new_tokens=4, train_rows=train,
        options=baselines.EvaluationOptions(few_shot_k=2, generalist_llm_max_rows=1),
        seed=0, resamples=100,
    )  # fmt: skip
    report = read_evaluation(raw)
    assert [b.name for b in report.baselines] == [
        "base_zero_shot", "base_few_shot", "classic_nearest_neighbour",
    ]  # fmt: skip
    few_shot = report.baseline("base_few_shot")
    assert few_shot.rows == 1 and "2 training rows" in few_shot.method
    neighbour = report.baseline("classic_nearest_neighbour")
    assert neighbour.rows == 2 and neighbour.metric == "exact_match"
    # "add 2 and 1:" has its exact twin in training ("add 2 and 1:" -> " 3").
    assert neighbour.value >= 0.5
    assert report.intervals["exact_match"][0] <= report.score <= report.intervals["exact_match"][1]
    assert raw["lift"]["loss_reduction"] == pytest.approx(0.0, abs=1e-3)  # fresh LoRA is a no-op
    assert report.as_dict() == raw
