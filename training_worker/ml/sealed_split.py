"""The platform's sealed test split: a seeded, stratified draw of held-out rows.

The expert never chooses these rows; evaluation runs on them after every job. The same rows,
task, seed, fraction and cap always give the same split, and ``split_fingerprint`` lets a
report prove which rows were sealed. Pure Python: no Django, no torch.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
FINGERPRINT_VERSION = "niche-sealed-split-v1"
FINGERPRINT_FIELDS = ("text", "label", "prompt", "completion")


@dataclass(frozen=True)
class SealedSplit:
    """Indices into the rows the split was drawn from; both lists are sorted and disjoint,
    and together they cover every row exactly once."""

    train_indices: list[int]
    sealed_indices: list[int]


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


def draw_sealed_split(
    rows: list[dict[str, Any]],
    *,
    task: str,
    seed: int,
    fraction: float = 0.2,
    cap: int = 2000,
) -> SealedSplit:
    """Draw the sealed test rows with ``random.Random(seed)``; deterministic for equal input.

    The sealed size is ``round(fraction * len(rows))`` (half up), at most ``cap``, and at
    least 1. Classification is stratified by ``row["label"]``: each label's share follows
    its frequency (largest-remainder rounding) and every label keeps at least one sealed and
    one training row, which can lift the size to the number of labels. Generation draws a
    plain seeded sample and always leaves at least one training row.

    Raises ``ValueError`` when the split is impossible: an unknown ``task``; ``fraction``
    outside (0, 1); ``cap`` < 1; fewer than 2 rows; a classification row without a
    ``"label"``; a label with fewer than 2 rows; or more labels than ``cap`` allows.
    """
    if task not in (TEXT_CLASSIFICATION, TEXT_GENERATION):
        raise ValueError(f"task must be {TEXT_CLASSIFICATION} or {TEXT_GENERATION}, got {task!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    n_rows = len(rows)
    if n_rows < 2:
        raise ValueError(f"a sealed split needs at least 2 rows, got {n_rows}")
    rng = random.Random(seed)
    total = _sealed_total(n_rows, fraction, cap)

    if task == TEXT_GENERATION:
        sealed = rng.sample(range(n_rows), min(max(total, 1), n_rows - 1))
    else:
        indices_by_label: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if "label" not in row:
                raise ValueError(f"row {index} has no 'label'; classification needs one per row")
            indices_by_label.setdefault(str(row["label"]), []).append(index)
        too_rare = sorted(label for label, found in indices_by_label.items() if len(found) < 2)
        if too_rare:
            raise ValueError(
                f"labels need at least 2 rows each to appear on both sides; too rare: {too_rare}"
            )
        n_labels = len(indices_by_label)
        if n_labels > cap:
            raise ValueError(f"cap={cap} cannot seal one row of each of the {n_labels} labels")
        total = min(max(total, n_labels), n_rows - n_labels)
        sizes = {label: len(found) for label, found in indices_by_label.items()}
        allocation = _allocate_per_label(total, sizes)
        sealed = []
        for label in sorted(indices_by_label):
            sealed.extend(rng.sample(indices_by_label[label], allocation[label]))

    sealed_set = set(sealed)
    return SealedSplit(
        train_indices=[index for index in range(n_rows) if index not in sealed_set],
        sealed_indices=sorted(sealed_set),
    )


def split_fingerprint(rows: list[dict[str, Any]], split: SealedSplit) -> str:
    """SHA-256 (hex) over the sealed indices and their rows' text, label, prompt and
    completion, in index order. Equal rows and split give an equal fingerprint; changing
    which rows are sealed, or any sealed row's content, changes it. Raises ``ValueError``
    for an index outside ``rows``."""
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for index in split.sealed_indices:
        if not 0 <= index < len(rows):
            raise ValueError(f"sealed index {index} is outside the {len(rows)} rows")
        content = {name: rows[index][name] for name in FINGERPRINT_FIELDS if name in rows[index]}
        line = json.dumps([index, content], ensure_ascii=False, sort_keys=True)
        digest.update(b"\n" + line.encode())
    return digest.hexdigest()
