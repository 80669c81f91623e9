"""The platform draws the sealed test rows of alice's dataset; she never chooses them."""

import re
from collections import Counter

import pytest

from training_worker.ml.sealed_split import (
    SealedSplit,
    draw_sealed_split,
    near_duplicate_key,
    sealed_split_seed,
    split_fingerprint,
    split_secret,
)

SECRET = b"deployment secret"
FILE_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


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
    fingerprint = split_fingerprint(rows, split, secret=SECRET)

    # a training row may change without changing the proof; a sealed row may not
    edited_training = [dict(row) for row in rows]
    edited_training[split.train_indices[0]]["text"] = "edited"
    edited_sealed = [dict(row) for row in rows]
    edited_sealed[split.sealed_indices[0]]["text"] = "edited"
    other_split = draw_sealed_split(rows, task="text-classification", seed=5)

    assert len(fingerprint) == 64
    assert fingerprint == split_fingerprint([dict(row) for row in rows], split, secret=SECRET)
    assert split_fingerprint(edited_training, split, secret=SECRET) == fingerprint
    assert split_fingerprint(edited_sealed, split, secret=SECRET) != fingerprint
    assert split_fingerprint(rows, other_split, secret=SECRET) != fingerprint
    assert split_fingerprint(rows, split, secret=b"another deployment") != fingerprint


def test_fingerprint_rejects_an_index_outside_the_rows():
    with pytest.raises(ValueError, match="outside the 2 rows"):
        split_fingerprint(
            generation_rows(2), SealedSplit(train_indices=[0], sealed_indices=[5]), secret=SECRET
        )


def test_alice_knowing_her_file_hash_cannot_predict_the_split():
    rows = labelled_rows({"urgent": 50, "routine": 50})
    ours = sealed_split_seed(secret=SECRET, file_sha256=FILE_SHA256)
    guessed_secret = sealed_split_seed(secret=b"a guess", file_sha256=FILE_SHA256)
    from_the_hash_alone = int(FILE_SHA256[:12], 16)  # what the seed used to be

    split = draw_sealed_split(rows, task="text-classification", seed=ours)

    assert ours == sealed_split_seed(secret=SECRET, file_sha256=FILE_SHA256)
    assert split == draw_sealed_split(rows, task="text-classification", seed=ours)
    assert ours not in (guessed_secret, from_the_hash_alone)
    for guess in (guessed_secret, from_the_hash_alone):
        assert split != draw_sealed_split(rows, task="text-classification", seed=guess)
    assert 0 <= ours < 2**63  # fits the signed 64-bit column it is stored in


def test_a_padded_file_gets_an_unrelated_seed():
    padded_sha256 = FILE_SHA256[:-1] + "9"

    assert sealed_split_seed(secret=SECRET, file_sha256=padded_sha256) != sealed_split_seed(
        secret=SECRET, file_sha256=FILE_SHA256
    )


def test_the_split_secret_is_the_configured_one_or_derived_for_this_purpose_only():
    derived = split_secret(configured="", secret_key="django-secret-key")

    assert split_secret(configured="ops-secret", secret_key="django-secret-key") == b"ops-secret"
    assert derived == split_secret(configured="", secret_key="django-secret-key")
    assert derived != b"django-secret-key"
    assert derived != split_secret(configured="", secret_key="another-secret-key")


def test_near_duplicate_key_ignores_case_whitespace_and_punctuation():
    assert near_duplicate_key("Chest pain, radiating to the LEFT arm!") == near_duplicate_key(
        "chest pain   radiating to the left arm"
    )
    assert near_duplicate_key("\uff23\uff48\uff45\uff53\uff54\tpain\u2026") == near_duplicate_key(
        "chest pain"
    )
    assert near_duplicate_key("chest pain") != near_duplicate_key("chest pains")


def test_near_duplicates_always_land_on_the_same_side():
    rows = labelled_rows({"urgent": 30, "routine": 30})
    # mallory pads her file with near-copies of some rows, hoping they straddle the split
    families = []
    for index in (0, 5, 31, 40):
        original = rows[index]
        rows.append({**original, "text": f"  {original['text'].upper()}!!! "})
        rows.append({**original, "text": original["text"].replace(" ", ",  ")})
        families.append({index, len(rows) - 2, len(rows) - 1})

    for seed in range(40):
        split = draw_sealed_split(rows, task="text-classification", seed=seed)
        sealed = set(split.sealed_indices)
        for family in families:
            assert family <= sealed or not family & sealed, (seed, family)
        assert split.near_duplicate_groups == 4
        assert split.near_duplicate_rows == 12


def test_generation_keeps_near_duplicate_prompts_together():
    rows = [*generation_rows(20), {"prompt": "q3.", "completion": "A3"}]

    for seed in range(20):
        split = draw_sealed_split(rows, task="text-generation", seed=seed)
        assert (3 in split.sealed_indices) == (20 in split.sealed_indices)
        assert split.near_duplicate_groups == 1


def test_a_label_whose_rows_are_all_near_duplicates_cannot_be_split():
    rows = [
        *labelled_rows({"a": 5}),
        {"text": "Rare case", "label": "b"},
        {"text": "rare case!", "label": "b"},
    ]

    with pytest.raises(ValueError, match=re.escape("too rare: ['b']")):
        draw_sealed_split(rows, task="text-classification", seed=0)
