"""The platform's sealed test split: a seeded, stratified draw of held-out rows.

The expert never chooses these rows; evaluation runs on them after every job. The same rows,
task, seed, fraction and cap always give the same split.

The expert is an adversary here: if they could predict the split they could pad or reorder
their file until the sealed rows suit them. So the seed is ``sealed_split_seed``, an HMAC of
the file's SHA-256 under a server secret (stable per file and deployment, never shown), and
``split_fingerprint`` is keyed the same way, so a report can prove which rows were sealed
without becoming an oracle for guesses. Rows that are equal once case, whitespace and
punctuation are ignored (``near_duplicate_key``) always land on the same side, so a
near-copy of a sealed row never trains the model. Pure Python: no Django, no torch.
"""

import hashlib
import hmac
import json
import random
import unicodedata
from dataclasses import dataclass
from typing import Any

TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
FINGERPRINT_VERSION = "niche-sealed-split-v2"
FINGERPRINT_FIELDS = ("text", "label", "prompt", "completion")
SECRET_PURPOSE = b"niche.sealed-split.secret"
# The field whose near-duplicates must share a side: the model's input.
GROUPING_FIELD = {TEXT_CLASSIFICATION: "text", TEXT_GENERATION: "prompt"}


@dataclass(frozen=True)
class SealedSplit:
    """Indices into the rows the split was drawn from; both lists are sorted and disjoint,
    and together they cover every row exactly once. ``near_duplicate_groups`` counts the
    groups of two or more near-duplicate rows that were kept on one side together, and
    ``near_duplicate_rows`` the rows in them."""

    train_indices: list[int]
    sealed_indices: list[int]
    near_duplicate_groups: int = 0
    near_duplicate_rows: int = 0


def split_secret(*, configured: str, secret_key: str) -> bytes:
    """The HMAC key of the split: ``configured`` if set, else a key derived from the
    deployment's ``secret_key`` for this purpose only (so it never equals SECRET_KEY)."""
    if configured:
        return configured.encode()
    return hmac.new(secret_key.encode(), SECRET_PURPOSE, hashlib.sha256).digest()


def sealed_split_seed(*, secret: bytes, file_sha256: str) -> int:
    """A 63-bit seed from HMAC-SHA256(secret, file hash): the same file gets the same split
    on one deployment, and without the secret the seed cannot be computed or guessed."""
    digest = hmac.new(secret, b"seed\n" + file_sha256.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def near_duplicate_key(text: str) -> str:
    """``text`` with case, whitespace and punctuation ignored (after NFKC): rows with equal
    keys count as one example for the split."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P")
    )


def _sealed_total(n_rows: int, fraction: float, cap: int) -> int:
    # Half-up rounding: Python's round() would send 2.5 to 2 and 3.5 to 4.
    return min(int(fraction * n_rows + 0.5), cap)


def _allocate_per_label(total: int, label_sizes: dict[str, int]) -> dict[str, int]:
    """Split ``total`` sealed rows across labels in proportion to their sizes by largest
    remainder, keeping every label within [1, size - 1]. Ties are broken by sorted label
    order, so the allocation depends on the label counts only, never on the seed."""
    n_rows = sum(label_sizes.values())
    labels = sorted(label_sizes)
    position = {label: rank for rank, label in enumerate(labels)}
    # Exact arithmetic: label's ideal share is total * size / n_rows; compare numerators.
    ideal = {label: total * label_sizes[label] for label in labels}
    allocation = {
        label: min(max(ideal[label] // n_rows, 1), label_sizes[label] - 1) for label in labels
    }

    def shortfall(label: str) -> int:
        return ideal[label] - allocation[label] * n_rows

    while sum(allocation.values()) < total:
        growable = [label for label in labels if allocation[label] < label_sizes[label] - 1]
        chosen = max(growable, key=lambda label: (shortfall(label), -position[label]))
        allocation[chosen] += 1
    while sum(allocation.values()) > total:
        shrinkable = [label for label in labels if allocation[label] > 1]
        chosen = min(shrinkable, key=lambda label: (shortfall(label), position[label]))
        allocation[chosen] -= 1
    return allocation


def _near_duplicate_groups(rows: list[dict[str, Any]], task: str) -> list[list[int]]:
    """Row indices grouped by the near-duplicate key of the task's input, in order of first
    appearance; a row without near-duplicates is a group of one."""
    field = GROUPING_FIELD[task]
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(near_duplicate_key(str(row.get(field, ""))), []).append(index)
    return list(groups.values())


def draw_sealed_split(
    rows: list[dict[str, Any]],
    *,
    task: str,
    seed: int,
    fraction: float = 0.2,
    cap: int = 2000,
) -> SealedSplit:
    """Draw the sealed test rows with ``random.Random(seed)``; deterministic for equal input.

    The draw is over groups of near-duplicate rows (``near_duplicate_key`` of the text or
    prompt), so each group lands whole on one side; without near-duplicates a group is a
    row and the sizes below are in rows. The sealed size is ``round(fraction * groups)``
    (half up), at most ``cap``, and at least 1. Classification is stratified by the label
    of each group's first row: each label's share follows its frequency (largest-remainder
    rounding) and every label keeps at least one sealed and one training group, which can
    lift the size to the number of labels. Generation draws a plain seeded sample and
    always leaves at least one training group.

    Raises ``ValueError`` when the split is impossible: an unknown ``task``; ``fraction``
    outside (0, 1); ``cap`` < 1; fewer than 2 distinct rows; a classification row without a
    ``"label"``; a label with fewer than 2 distinct rows; or more labels than ``cap`` allows.
    """
    if task not in (TEXT_CLASSIFICATION, TEXT_GENERATION):
        raise ValueError(f"task must be {TEXT_CLASSIFICATION} or {TEXT_GENERATION}, got {task!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if task == TEXT_CLASSIFICATION:
        for index, row in enumerate(rows):
            if "label" not in row:
                raise ValueError(f"row {index} has no 'label'; classification needs one per row")
    groups = _near_duplicate_groups(rows, task)
    n_groups = len(groups)
    if n_groups < 2:
        raise ValueError(
            f"a sealed split needs at least 2 rows that are not near-duplicates, got {n_groups}"
        )
    rng = random.Random(seed)
    total = _sealed_total(n_groups, fraction, cap)

    if task == TEXT_GENERATION:
        sealed_groups = rng.sample(range(n_groups), min(max(total, 1), n_groups - 1))
    else:
        groups_by_label: dict[str, list[int]] = {}
        for number, members in enumerate(groups):
            groups_by_label.setdefault(str(rows[members[0]]["label"]), []).append(number)
        too_rare = sorted(label for label, found in groups_by_label.items() if len(found) < 2)
        if too_rare:
            raise ValueError(
                "labels need at least 2 rows each (near-duplicates count once) to appear on "
                f"both sides; too rare: {too_rare}"
            )
        n_labels = len(groups_by_label)
        if n_labels > cap:
            raise ValueError(f"cap={cap} cannot seal one row of each of the {n_labels} labels")
        total = min(max(total, n_labels), n_groups - n_labels)
        sizes = {label: len(found) for label, found in groups_by_label.items()}
        allocation = _allocate_per_label(total, sizes)
        sealed_groups = []
        for label in sorted(groups_by_label):
            sealed_groups.extend(rng.sample(groups_by_label[label], allocation[label]))

    sealed_set = {index for number in sealed_groups for index in groups[number]}
    merged = [members for members in groups if len(members) > 1]
    return SealedSplit(
        train_indices=[index for index in range(len(rows)) if index not in sealed_set],
        sealed_indices=sorted(sealed_set),
        near_duplicate_groups=len(merged),
        near_duplicate_rows=sum(len(members) for members in merged),
    )


def split_fingerprint(rows: list[dict[str, Any]], split: SealedSplit, *, secret: bytes) -> str:
    """HMAC-SHA256 (hex) under ``secret`` over the sealed indices and their rows' text,
    label, prompt and completion, in index order. Equal rows and split give an equal
    fingerprint; changing which rows are sealed, or any sealed row's content, changes it.
    Keyed so that only the platform can check a guess of the sealed rows against it.
    Raises ``ValueError`` for an index outside ``rows``."""
    digest = hmac.new(secret, FINGERPRINT_VERSION.encode(), hashlib.sha256)
    for index in split.sealed_indices:
        if not 0 <= index < len(rows):
            raise ValueError(f"sealed index {index} is outside the {len(rows)} rows")
        content = {name: rows[index][name] for name in FINGERPRINT_FIELDS if name in rows[index]}
        line = json.dumps([index, content], ensure_ascii=False, sort_keys=True)
        digest.update(b"\n" + line.encode())
    return digest.hexdigest()
