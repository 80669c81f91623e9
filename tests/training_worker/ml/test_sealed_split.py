"""The platform draws the sealed test rows of alice's dataset; she never chooses them."""

import re
from collections import Counter

import pytest

from training_worker.ml.sealed_split import SealedSplit, draw_sealed_split, split_fingerprint


def labelled_rows(sizes: dict[str, int]) -> list[dict]:
    rows = []
    for label, size in sizes.items():
        rows += [
            {"row": len(rows) + 2, "text": f"{label} {i}", "label": label} for i in range(size)
        ]
    return rows


def generation_rows(n: int) -> list[dict]:
    return [{"row": i + 1, "prompt": f"Q{i}", "completion": f"A{i}"} for i in range(n)]


def sealed_labels(rows: list[dict], split: SealedSplit) -> Counter:
    return Counter(rows[i]["label"] for i in split.sealed_indices)


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one():
    rows = labelled_rows({"positive": 60, "negative": 40})

    first = draw_sealed_split(rows, task="text-classification", seed=7)
    again = draw_sealed_split(rows, task="text-classification", seed=7)
    other = draw_sealed_split(rows, task="text-classification", seed=8)

    assert first == again
    assert other.sealed_indices != first.sealed_indices
    assert len(other.sealed_indices) == len(first.sealed_indices) == 20


def test_split_is_disjoint_complete_and_sorted():
    rows = labelled_rows({"a": 33, "b": 17, "c": 9})

    split = draw_sealed_split(rows, task="text-classification", seed=1)

    assert set(split.train_indices).isdisjoint(split.sealed_indices)
    assert sorted(split.train_indices + split.sealed_indices) == list(range(59))
    assert split.train_indices == sorted(split.train_indices)
    assert split.sealed_indices == sorted(split.sealed_indices)


def test_sealed_rows_follow_label_proportions():
    rows = labelled_rows({"positive": 70, "negative": 25, "neutral": 5})

    split = draw_sealed_split(rows, task="text-classification", seed=3)

    assert sealed_labels(rows, split) == {"positive": 14, "negative": 5, "neutral": 1}


def test_largest_remainders_get_the_leftover_rows():
    # 5 sealed of 20: ideal shares a 1.75, b 1.75, c 1.5 -> floors 1/1/1, remainders to a and b
    rows = labelled_rows({"a": 7, "b": 7, "c": 6})

    split = draw_sealed_split(rows, task="text-classification", seed=0, fraction=0.25)

    assert sealed_labels(rows, split) == {"a": 2, "b": 2, "c": 1}


def test_every_label_lands_on_both_sides_even_when_tiny():
    # 10% of 54 is 5; rare labels b and c still get one sealed row each, taken from a
    rows = labelled_rows({"a": 50, "b": 2, "c": 2})

    split = draw_sealed_split(rows, task="text-classification", seed=11, fraction=0.1)

    assert sealed_labels(rows, split) == {"a": 3, "b": 1, "c": 1}
    train_labels = Counter(rows[i]["label"] for i in split.train_indices)
    assert train_labels == {"a": 47, "b": 1, "c": 1}


def test_cap_limits_the_sealed_rows_and_keeps_proportions():
    rows = labelled_rows({"spam": 7_500, "ham": 2_500})

    split = draw_sealed_split(rows, task="text-classification", seed=5, cap=2000)

    assert len(split.sealed_indices) == 2000
    assert sealed_labels(rows, split) == {"spam": 1500, "ham": 500}


def test_generation_draws_a_plain_seeded_sample():
    rows = generation_rows(52)

    split = draw_sealed_split(rows, task="text-generation", seed=2)

    assert len(split.sealed_indices) == 10  # round(0.2 * 52) = 10.4 -> 10
    assert split == draw_sealed_split(rows, task="text-generation", seed=2)
    assert sorted(split.train_indices + split.sealed_indices) == list(range(52))


def test_rounding_is_half_up():
    split = draw_sealed_split(generation_rows(25), task="text-generation", seed=0, fraction=0.1)

    assert len(split.sealed_indices) == 3  # 2.5 rounds up, unlike Python's round()


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        (labelled_rows({"a": 5, "b": 1}), {}, "too rare: ['b']"),
        (labelled_rows({"a": 5, "b": 5}), {"fraction": 0.0}, "fraction must be in (0, 1)"),
        (labelled_rows({"a": 5, "b": 5, "c": 5}), {"cap": 2}, "cannot seal one row of each"),
        (labelled_rows({"a": 5, "b": 5}), {"cap": 0}, "cap must be >= 1"),
        ([{"text": "alone", "label": "a"}], {}, "at least 2 rows"),
        ([{"text": "x"}, {"text": "y"}], {}, "row 0 has no 'label'"),
    ],
)
def test_impossible_splits_raise_value_error(rows, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        draw_sealed_split(rows, task="text-classification", seed=0, **kwargs)


def test_unknown_task_raises_value_error():
    with pytest.raises(ValueError, match="task must be"):
        draw_sealed_split(generation_rows(10), task="translation", seed=0)


def test_fingerprint_proves_which_rows_were_sealed():
    rows = labelled_rows({"a": 10, "b": 10})
    split = draw_sealed_split(rows, task="text-classification", seed=4)
    fingerprint = split_fingerprint(rows, split)

    # a training row may change without changing the proof; a sealed row may not
    edited_training = [dict(row) for row in rows]
    edited_training[split.train_indices[0]]["text"] = "edited"
    edited_sealed = [dict(row) for row in rows]
    edited_sealed[split.sealed_indices[0]]["text"] = "edited"
    other_split = draw_sealed_split(rows, task="text-classification", seed=5)

    assert len(fingerprint) == 64
    assert fingerprint == split_fingerprint([dict(row) for row in rows], split)
    assert split_fingerprint(edited_training, split) == fingerprint
    assert split_fingerprint(edited_sealed, split) != fingerprint
    assert split_fingerprint(rows, other_split) != fingerprint


def test_fingerprint_rejects_an_index_outside_the_rows():
    with pytest.raises(ValueError, match="outside the 2 rows"):
        split_fingerprint(generation_rows(2), SealedSplit(train_indices=[0], sealed_indices=[5]))
