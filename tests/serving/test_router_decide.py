"""serving.router.decide on real embeddings: two specialists' signals, fitted as training
fits them (router_signals.compute_signals), and inputs in and out of their domains."""

import itertools
import json
from pathlib import Path

import pytest

from serving import router
from tests.listings.conftest import classification_evaluation
from training_worker.ml import router_signals

REPO_ROOT = Path(__file__).resolve().parents[2]
TICKETS = [
    f"Hello, {problem} with {product}, please help."
    for problem, product in itertools.product(
        ["charged twice", "cannot log in", "app crashes", "invoice is wrong", "refund late",
         "password reset fails", "order missing", "card declined"],
        ["my subscription", "the mobile app", "my account", "the March invoice", "checkout"],
    )
]  # fmt: skip


def candidate(slug: str, texts: list[str]) -> router.Candidate:
    signals = router_signals.compute_signals(
        train_inputs=texts[:-20], validation_inputs=texts[-20:], validation_wins=[True] * 20,
        seed=0,
    )  # fmt: skip
    calibration = signals["calibration"]
    return router.Candidate(
        slug=slug,
        title=slug,
        check=router.fallback_check(),
        signals=router.VersionSignals(
            prototypes=router_signals.np.asarray(signals["prototypes"], dtype="float32"),
            calibration=calibration,
            labels=(),
        ),
        lift_low=0.1,
    )


@pytest.fixture(scope="module")
def found() -> router.CandidateSet:
    path = REPO_ROOT / "frontend" / "demo_data" / "past_tense.jsonl"
    verbs = [json.loads(line)["prompt"] for line in path.read_text().splitlines()][:200]
    return router.CandidateSet(
        task="text-generation",
        candidates=[candidate("past-tense", verbs), candidate("tickets", TICKETS)],
    )


def test_each_input_goes_to_the_specialist_of_its_domain_or_to_the_generalist(found):
    routes = router.decide(
        ["wander", "Hi, my card was charged twice for checkout.", "Why is the sky blue?"],
        found,
        threshold=0.5,
    )

    assert [r.name for r in routes] == ["past-tense", "tickets", "niche/generalist"]
    verb, ticket, other = routes
    assert ticket.confidence >= 0.5 and ticket.similarity is not None
    assert verb.confidence >= 0.5 and verb.runner_up["listing"] == "tickets"
    assert verb.runner_up["confidence"] < verb.confidence
    assert "at least the threshold 0.50" in verb.reason and "nearest past-tense" in verb.reason
    assert other.listing is None and other.as_dict()["fallback"] is True
    assert other.runner_up["confidence"] < 0.5
    assert other.confidence == pytest.approx(1 - other.runner_up["confidence"], abs=1e-4)


def test_a_higher_threshold_sends_more_to_the_generalist(found):
    texts = ["wander", "Hi, my card was charged twice for checkout."]
    assert all(r.listing is None for r in router.decide(texts, found, threshold=0.999))


def test_with_no_candidate_the_generalist_answers_and_says_why():
    (route,) = router.decide(
        ["anything"], router.CandidateSet(task="text-generation", candidates=[])
    )
    assert route.listing is None and route.confidence == 1.0
    assert "no specialist you may call fits this request" in route.reason


def test_the_gate_reads_the_lift_over_the_generalist_the_router_falls_back_to():
    # 0.9 vs a 0.6 zero-shot generalist: +0.30 [+0.26, +0.34]
    assert router_signals.fallback_lift_low(
        classification_evaluation(0.9, 0.6), "text-classification"
    ) == pytest.approx(0.26)
    assert router_signals.fallback_lift_low(
        classification_evaluation(0.62, 0.6), "text-classification"
    ) == pytest.approx(-0.02)
    assert router_signals.fallback_lift_low({}, "text-generation") is None


@pytest.mark.parametrize(
    "labels", [["one"], "a,b", ["a", "a"], ["a", ""], ["a", 3], [f"l{i}" for i in range(65)]]
)
def test_request_labels_are_two_to_64_distinct_names(labels):
    from serving.errors import InvalidInferenceInput

    with pytest.raises(InvalidInferenceInput):
        router.request_labels(labels)
