"""The router's signals on real embeddings (all-MiniLM-L6-v2 from its package)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from training_worker.ml import router_signals

REPO_ROOT = Path(__file__).resolve().parents[3]


def past_tense_prompts() -> list[str]:
    path = REPO_ROOT / "frontend" / "demo_data" / "past_tense.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def verbs_signals():
    verbs = past_tense_prompts()
    rng = random.Random(0)
    wins = [rng.random() < 0.9 for _ in range(60)]  # a specialist that wins 90 % in domain
    signals = router_signals.compute_signals(
        train_inputs=verbs[:300], validation_inputs=verbs[300:360], validation_wins=wins, seed=0
    )
    return signals, verbs[360:], wins


def test_prototypes_are_at_most_eight_unit_centroids_of_the_training_inputs(verbs_signals):
    signals, _, _ = verbs_signals
    prototypes = np.asarray(signals["prototypes"])
    assert prototypes.shape == (8, 384)
    assert np.allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-3)
    assert signals["prototype_rows"] == 300
    assert signals["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_calibrated_probability_is_high_in_domain_and_low_outside(verbs_signals):
    signals, unseen_verbs, wins = verbs_signals
    calibration = signals["calibration"]
    prototypes = np.asarray(signals["prototypes"], dtype=np.float32)
    embed = router_signals.embedder().embed

    def p(texts):
        sims = router_signals.similarity(embed(texts), prototypes)
        return router_signals.win_probability(sims, calibration)

    in_domain = p(unseen_verbs[:80])
    outside = p(["What is the capital of Peru?", "Summarise this contract in one line."])
    assert calibration["method"] == "isotonic"
    assert calibration["y"] == sorted(calibration["y"])  # nearer the prototypes, likelier to win
    assert in_domain.mean() > 0.6 and abs(in_domain.mean() - np.mean(wins)) < 0.3
    assert outside.max() < 0.2
    losses = 60 - sum(wins)
    assert signals["validation"] == {"rows": 60, "wins": sum(wins), "losses": losses, "ties": 0}


def test_without_validation_rows_there_is_no_calibration():
    signals = router_signals.compute_signals(
        train_inputs=past_tense_prompts()[:40], validation_inputs=[], validation_wins=[], seed=0
    )
    assert signals["calibration"] is None and len(signals["prototypes"]) == 8


def test_a_version_that_never_wins_gets_a_low_probability_everywhere():
    few = router_signals.calibration_fit(np.array([0.9, 0.8, 0.2, 0.1]), np.zeros(4))
    many = router_signals.calibration_fit(np.linspace(0, 1, 40), np.zeros(40))
    assert router_signals.win_probability(np.array([0.05, 0.95]), few).max() < 0.5
    assert router_signals.win_probability(np.array([0.05, 0.95]), many).max() < 0.1


def test_the_calibration_levels_off_at_the_in_domain_rate_rather_than_rising_to_one():
    rng = np.random.default_rng(0)
    in_sim = rng.uniform(0.4, 0.8, 200)
    won = rng.random(200) < 0.7  # the specialist beats the generalist 70 % of the time
    background = rng.uniform(0.0, 0.3, 200)
    calibration = router_signals.calibration_fit(
        np.concatenate([in_sim, background]), np.concatenate([won, np.zeros(200)])
    )
    p = router_signals.win_probability(np.array([0.1, 0.45, 0.6, 0.75]), calibration)
    assert p[0] < 0.05
    assert all(0.5 < value < 0.9 for value in p[1:])  # in domain: about 0.7, not 1


def test_outcomes_say_who_was_better_and_leave_ties_out():
    # chrF (higher is better)
    assert router_signals.generation_outcomes([0.9, 0.5, 1.0, 0.4], [0.5, 0.5, 1.0, 0.6], True) == [
        True, None, None, False,
    ]  # fmt: skip
    # character error rate (lower is better)
    assert router_signals.generation_outcomes([0.1, 0.0, 0.3], [0.5, 0.0, 0.2], False) == [
        True, None, False,
    ]  # fmt: skip
    # classification: only the specialist right, both right, only the generalist, both wrong
    assert router_signals.classification_outcomes([1, 0, 0, 2], [0, 0, 1, 1], [1, 0, 1, 0]) == [
        True, None, False, None,
    ]  # fmt: skip


def test_ties_are_left_out_of_the_calibration():
    verbs = past_tense_prompts()
    with_ties = router_signals.compute_signals(
        train_inputs=verbs[:100], validation_inputs=verbs[100:130],
        validation_wins=[True] * 10 + [None] * 20, seed=0,
    )  # fmt: skip
    without = router_signals.compute_signals(
        train_inputs=verbs[:100], validation_inputs=verbs[100:110],
        validation_wins=[True] * 10, seed=0,
    )  # fmt: skip
    assert with_ties["validation"] == {"rows": 30, "wins": 10, "losses": 0, "ties": 20}
    # (equal up to float noise: the rows are embedded in batches of other sizes)
    assert with_ties["calibration"]["y"] == pytest.approx(without["calibration"]["y"], abs=1e-3)


def test_the_background_set_is_committed_and_never_empty():
    texts = router_signals.background_texts()
    assert len(texts) >= 150
    assert not any(text.startswith("#") for text in texts)
