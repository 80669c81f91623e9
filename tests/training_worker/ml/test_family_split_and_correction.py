"""Alice pads one file ten ways; every variant is scored on the same sealed rows, and each
further sealed evaluation on that data widens the lift's interval (Bonferroni)."""

import itertools
import random

import numpy as np
import pytest

from training_worker.ml import evaluation
from training_worker.ml.data_families import (
    SEALED_ROWS_MISSING,
    SPLIT_IMPOSSIBLE,
    FamilySplitRefused,
    containment,
    family_split,
    input_key_digest,
    matching_family,
    pack_digests,
    row_digests,
    unpack_digests,
)
from training_worker.ml.evaluation_report import read_evaluation
from training_worker.ml.sealed_split import draw_sealed_split, near_duplicate_key

SECRET = b"deployment secret"
TASK = "text-classification"
LABELS = ("billing", "shipping", "returns")
FULL_WIDTH_TICKET = "".join(chr(ord(ch) + 0xFEE0) for ch in "Ticket")  # NFKC folds it back


def original_rows(n_per_label: int = 30) -> list[dict]:
    return [
        {"text": f"Ticket {label} number {i}: where is my {label} answer?", "label": label}
        for label in LABELS
        for i in range(n_per_label)
    ]


def sealed_inputs(rows: list[dict], indices: list[int]) -> set[str]:
    return {near_duplicate_key(rows[i]["text"]) for i in indices}


@pytest.fixture
def family():
    """The original's split, drawn as before, and the family it founds."""
    rows = original_rows()
    split = draw_sealed_split(rows, task=TASK, seed=11)
    digests = row_digests(rows, task=TASK, secret=SECRET)
    return {
        "rows": rows,
        "split": split,
        "input_keys": unpack_digests(pack_digests(digests)),
        "sealed_keys": unpack_digests(pack_digests(digests[i] for i in split.sealed_indices)),
    }


def padded_variants(rows: list[dict], train_indices: list[int]) -> dict[str, list[dict]]:
    rng = random.Random(3)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    extra = [{"text": f"A brand new {label} question {i}", "label": label} for i in range(12)
             for label in LABELS]  # fmt: skip
    junk = [{"text": f"zq{rng.randrange(10**9)}x", "label": LABELS[i % 3]} for i in range(40)]
    dropped = set(rng.sample(train_indices, 15))
    subset = [row for i, row in enumerate(rows) if i not in dropped]
    return {
        "the same rows": [dict(row) for row in rows],
        "extra rows": rows + extra,
        "reordered": shuffled,
        "every row twice": rows + rows,
        "upper case": [{**row, "text": row["text"].upper()} for row in rows],
        "punctuation and spacing": [
            {**row, "text": "  " + row["text"].replace(" ", "  ").replace(":", " ;") + "!!"}
            for row in rows
        ],
        "full-width letters": [
            {**row, "text": row["text"].replace("Ticket", FULL_WIDTH_TICKET)} for row in rows
        ],
        "a subset of the training rows dropped": subset,
        "junk rows appended": rows + junk,
        "all of it at once": [
            {**row, "text": row["text"].lower() + " ..."} for row in reversed(subset + subset[:9])
        ]
        + extra
        + junk,
    }


def test_every_padded_variant_joins_the_family_and_is_sealed_on_the_same_rows(family):
    rows, split = family["rows"], family["split"]
    families = [("another family", frozenset({b"x" * 8})), ("the original", family["input_keys"])]
    expected = sealed_inputs(rows, split.sealed_indices)

    variants = padded_variants(rows, split.train_indices)

    assert len(variants) == 10
    for name, variant in variants.items():
        digests = row_digests(variant, task=TASK, secret=SECRET)
        assert matching_family(frozenset(digests), families) == "the original", name
        placed = family_split(
            variant, task=TASK, digests=digests, sealed_keys=family["sealed_keys"]
        )
        assert sealed_inputs(variant, placed.sealed_indices) == expected, name
        assert not sealed_inputs(variant, placed.train_indices) & expected, name
        assert sorted(placed.sealed_indices + placed.train_indices) == list(range(len(variant)))


def test_generation_variants_are_matched_and_sealed_by_their_prompts():
    rows = [{"prompt": f"Spell the number {n}.", "completion": f" n{n}"} for n in range(40)]
    split = draw_sealed_split(rows, task="text-generation", seed=4)
    digests = row_digests(rows, task="text-generation", secret=SECRET)
    sealed_keys = frozenset(digests[i] for i in split.sealed_indices)
    # new completions and recased prompts: the prompt is what decides the side
    variant = [{"prompt": r["prompt"].upper(), "completion": " ?"} for r in rows[::-1]]
    variant_digests = row_digests(variant, task="text-generation", secret=SECRET)

    placed = family_split(
        variant, task="text-generation", digests=variant_digests, sealed_keys=sealed_keys
    )

    assert matching_family(frozenset(variant_digests), [("original", frozenset(digests))])
    assert {near_duplicate_key(variant[i]["prompt"]) for i in placed.sealed_indices} == {
        near_duplicate_key(rows[i]["prompt"]) for i in split.sealed_indices
    }
    with pytest.raises(FamilySplitRefused) as refused:  # nothing left to train on
        only_sealed = [rows[i] for i in split.sealed_indices]
        family_split(
            only_sealed,
            task="text-generation",
            digests=row_digests(only_sealed, task="text-generation", secret=SECRET),
            sealed_keys=sealed_keys,
        )
    assert refused.value.code == SPLIT_IMPOSSIBLE


def test_a_genuinely_different_dataset_matches_no_family(family):
    other = [
        {"text": f"Radiology report {i}: {label} finding", "label": label}
        for label in ("normal", "abnormal")
        for i in range(40)
    ]
    # ...even sharing a quarter of the original's rows (under half of the smaller side)
    other += family["rows"][:20]

    digests = frozenset(row_digests(other, task=TASK, secret=SECRET))

    assert containment(digests, family["input_keys"]) < 0.5
    assert matching_family(digests, [("the original", family["input_keys"])]) is None


def test_the_family_with_the_largest_overlap_wins_and_the_oldest_breaks_a_tie(family):
    keys = family["input_keys"]

    def sharing(share: float) -> frozenset[bytes]:
        """A family as large as the original that holds ``share`` of its inputs."""
        kept = sorted(keys)[: int(share * len(keys))]
        fresh = [input_key_digest(secret=SECRET, key=f"new {i}") for i in range(len(keys))]
        return frozenset(kept + fresh[: len(keys) - len(kept)])

    assert containment(keys, sharing(0.6)) == pytest.approx(0.6, abs=0.02)
    assert matching_family(keys, [("60%", sharing(0.6)), ("90%", sharing(0.9))]) == "90%"
    assert matching_family(keys, [("older", keys), ("newer", keys)]) == "older"
    assert matching_family(keys, [("40%", sharing(0.4))]) is None


def test_a_variant_that_keeps_too_few_sealed_rows_is_refused_not_redrawn(family):
    rows, split = family["rows"], family["split"]
    training_only = [rows[i] for i in split.train_indices]

    with pytest.raises(FamilySplitRefused) as refused:
        family_split(
            training_only,
            task=TASK,
            digests=row_digests(training_only, task=TASK, secret=SECRET),
            sealed_keys=family["sealed_keys"],
        )

    assert refused.value.code == SEALED_ROWS_MISSING
    assert f"keeps 0 of the {len(split.sealed_indices)}" in refused.value.message


def test_a_variant_with_a_new_label_is_refused_since_it_could_not_be_evaluated(family):
    rows = family["rows"] + [{"text": f"Refund {i}", "label": "refunds"} for i in range(20)]

    with pytest.raises(FamilySplitRefused) as refused:
        family_split(
            rows,
            task=TASK,
            digests=row_digests(rows, task=TASK, secret=SECRET),
            sealed_keys=family["sealed_keys"],
        )

    assert refused.value.code == SPLIT_IMPOSSIBLE
    assert "refunds" in refused.value.message


def test_digests_are_keyed_short_and_hold_no_text(family):
    key = near_duplicate_key(family["rows"][0]["text"])

    digest = input_key_digest(secret=SECRET, key=key)

    assert len(digest) == 8
    assert digest != input_key_digest(secret=b"another deployment", key=key)
    packed = pack_digests(row_digests(family["rows"], task=TASK, secret=SECRET))
    assert len(packed) == 8 * len(family["input_keys"])
    assert b"Ticket" not in packed and key.encode()[:8] not in packed


# --- the correction ------------------------------------------------------------------


def test_the_first_evaluation_keeps_the_plain_95_percent_interval():
    assert evaluation.lift_percentiles(1) == (2.5, 97.5)
    assert evaluation.lift_percentiles(4) == (0.625, 99.375)
    with pytest.raises(ValueError):
        evaluation.lift_percentiles(0)


def test_the_lift_interval_widens_with_every_sealed_evaluation_on_the_data():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=200)
    specialist = np.where(rng.random(200) < 0.8, y_true, (y_true + 1) % 3)
    baseline = np.where(rng.random(200) < 0.6, y_true, (y_true + 2) % 3)

    lifts = [
        evaluation.paired_bootstrap_lift(
            "accuracy", y_true, specialist, baseline, 3, resamples=1000, seed=0,
            sealed_evaluations=m,
        )
        for m in range(1, 11)
    ]  # fmt: skip

    first = lifts[0]
    assert set(first) == {"metric", "delta", "ci_low", "ci_high"}
    for earlier, later in itertools.pairwise(lifts):
        assert later["delta"] == first["delta"]
        assert later["ci_low"] <= earlier["ci_low"] and later["ci_high"] >= earlier["ci_high"]
        # the plain interval is kept beside the corrected one
        assert (later["ci_low_uncorrected"], later["ci_high_uncorrected"]) == (
            first["ci_low"],
            first["ci_high"],
        )
    width = [lift["ci_high"] - lift["ci_low"] for lift in lifts]
    assert width[-1] > width[0]


def test_the_graded_lift_is_corrected_the_same_way():
    from training_worker.ml.graded_metrics import CHRF

    rng = np.random.default_rng(1)
    specialist, baseline = rng.random(80), rng.random(80) * 0.8

    one = evaluation.paired_graded_lift(CHRF, specialist, baseline, 500, 0)
    five = evaluation.paired_graded_lift(CHRF, specialist, baseline, 500, 0, sealed_evaluations=5)

    assert five["ci_low"] < one["ci_low"] and five["ci_high"] > one["ci_high"]
    assert (five["ci_low_uncorrected"], five["ci_high_uncorrected"]) == (
        one["ci_low"],
        one["ci_high"],
    )


def report(sealed_evaluations: int) -> dict:
    y_true = [0, 1, 2] * 20
    specialist = [label if i % 5 else (label + 1) % 3 for i, label in enumerate(y_true)]
    return evaluation.classification_report(
        y_true, specialist, ["a", "b", "c"], 0, [0] * 60, "embedding", seed=0, resamples=300,
        sealed_evaluations=sealed_evaluations,
    )  # fmt: skip


def test_the_report_records_the_attempt_and_pages_name_the_corrected_interval():
    third = read_evaluation(report(3))
    first = read_evaluation(report(1))

    assert third.prior_sealed_evaluations == 2 and first.prior_sealed_evaluations == 0
    assert third.lift_interval_label == (
        "95% interval, Bonferroni-corrected for 3 sealed evaluations on this data"
    )
    assert first.lift_interval_label == "95% interval"
    shown, plain = third.strongest_baseline.lift, first.strongest_baseline.lift
    assert shown.uncorrected_interval == (plain.ci_low, plain.ci_high)
    assert shown.ci_high - shown.ci_low > plain.ci_high - plain.ci_low
    public = third.as_public_dict()
    assert public["prior_sealed_evaluations"] == 2 and public["sealed_evaluations_recorded"]
    assert public["lift_interval_correction"] == "bonferroni"
    assert read_evaluation(third.as_dict()) == third  # the stored form reads back the same


def test_a_report_written_before_attempts_were_counted_reads_as_the_first():
    stored = report(1)
    del stored["sealed_evaluations"]

    old = read_evaluation(stored)

    assert old.sealed_evaluations is None and old.prior_sealed_evaluations == 0
    assert old.lift_interval_label == "95% interval"
    assert old.as_public_dict()["sealed_evaluations_recorded"] is False
    assert old.strongest_baseline.lift.uncorrected_interval == (
        old.strongest_baseline.lift.ci_low,
        old.strongest_baseline.lift.ci_high,
    )
