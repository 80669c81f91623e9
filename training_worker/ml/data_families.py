"""Data families: near-duplicate datasets of one owner share one sealed split.

If every upload drew its own sealed split, an expert could pad one file ten ways (rows
added, reordered, copied, recased, dropped), train on each and keep the luckiest
evaluation. So the platform compares a new dataset with the owner's earlier ones of the same
task by the rows they share, never by file hash:

- each row's input (classification: text, generation: prompt) is reduced to the sealed
  split's ``near_duplicate_key`` and then to a keyed digest (``input_key_digest``, HMAC under
  the split's server secret, 8 bytes): the platform stores digests, never the text, and
  without the secret a digest cannot be checked against a guess;
- a dataset **joins** the family whose first dataset shares at least ``MIN_CONTAINMENT`` of
  the smaller side's distinct keys (``containment``; the highest wins, then the oldest); else
  it **founds** a family, and its split (drawn as before) becomes the family's;
- a member's sealed rows are exactly its rows whose key is among the family's sealed keys
  (``family_split``); every other row trains. Near-duplicates still share a side, since the
  side is a function of the key. A member that keeps fewer than ``MIN_SEALED_KEPT`` of the
  family's sealed keys, or leaves a label without a sealed or a training row, is refused
  (``FamilySplitRefused``) rather than given a fresh draw.

Pure Python: no Django, no torch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any, TypeVar

from training_worker.ml.sealed_split import (
    GROUPING_FIELD,
    TEXT_CLASSIFICATION,
    SealedSplit,
    near_duplicate_key,
)

KEY_PURPOSE = b"niche.data-family.input-key\n"
DIGEST_BYTES = 8  # 64 bits: collisions are negligible at 200,000 rows, and keyed anyway
# A dataset joins a family when at least this share of the smaller side's distinct inputs
# is shared: a padded or trimmed copy joins, a dataset that merely overlaps a little does not.
MIN_CONTAINMENT = 0.5
# A member must keep at least this share of the family's sealed inputs: it may drop a few
# rows (cleaning), never choose which held-out rows it is scored on.
MIN_SEALED_KEPT = 0.9

SEALED_ROWS_MISSING = "family_sealed_rows_missing"
SPLIT_IMPOSSIBLE = "family_split_impossible"

Family = TypeVar("Family")


class FamilySplitRefused(ValueError):
    """A member of a data family cannot be scored on the family's sealed rows; ``code`` is
    ``family_sealed_rows_missing`` or ``family_split_impossible``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def input_key_digest(*, secret: bytes, key: str) -> bytes:
    """The stored form of one near-duplicate key: HMAC-SHA256 under ``secret``, truncated."""
    return hmac.new(secret, KEY_PURPOSE + key.encode(), hashlib.sha256).digest()[:DIGEST_BYTES]


def row_digests(rows: list[dict[str, Any]], *, task: str, secret: bytes) -> list[bytes]:
    """One digest per row (row order) of the near-duplicate key of the task's input."""
    field = GROUPING_FIELD[task]
    cache: dict[str, bytes] = {}
    digests = []
    for row in rows:
        key = near_duplicate_key(str(row.get(field, "")))
        if key not in cache:
            cache[key] = input_key_digest(secret=secret, key=key)
        digests.append(cache[key])
    return digests


def pack_digests(digests: Iterable[bytes]) -> bytes:
    """Distinct digests, sorted and concatenated: how a family stores a key set."""
    return b"".join(sorted(set(digests)))


def unpack_digests(packed: bytes | memoryview) -> frozenset[bytes]:
    packed = bytes(packed)
    if len(packed) % DIGEST_BYTES:
        raise ValueError(f"a packed key set is a multiple of {DIGEST_BYTES} bytes")
    return frozenset(packed[i : i + DIGEST_BYTES] for i in range(0, len(packed), DIGEST_BYTES))


def containment(one: frozenset[bytes] | set[bytes], other: frozenset[bytes] | set[bytes]) -> float:
    """Shared distinct keys over the smaller set's size (0 when either is empty)."""
    if not one or not other:
        return 0.0
    return len(one & other) / min(len(one), len(other))


def matching_family(
    keys: frozenset[bytes] | set[bytes],
    families: Iterable[tuple[Family, frozenset[bytes]]],
    *,
    threshold: float = MIN_CONTAINMENT,
) -> Family | None:
    """The family (of ``(family, its input keys)``, oldest first) whose keys contain the
    most of ``keys`` by ``containment``, at least ``threshold``; the oldest wins a tie."""
    best, best_share = None, threshold
    for family, family_keys in families:
        share = containment(keys, family_keys)
        if share >= best_share and (best is None or share > best_share):
            best, best_share = family, share
    return best


def family_split(
    rows: list[dict[str, Any]],
    *,
    task: str,
    digests: list[bytes],
    sealed_keys: frozenset[bytes],
    min_sealed_kept: float = MIN_SEALED_KEPT,
) -> SealedSplit:
    """A family member's split: rows whose digest is a family sealed key are sealed, the
    rest train. ``digests`` are ``row_digests(rows, ...)``.

    Raises ``FamilySplitRefused`` (``family_sealed_rows_missing``) when the rows keep fewer
    than ``min_sealed_kept`` of ``sealed_keys``, and (``family_split_impossible``) when no
    row is left to train on or, for classification, a label has no sealed or no training
    row (a group's label is its first row's, as in ``draw_sealed_split``).
    """
    if len(digests) != len(rows):
        raise ValueError("one digest per row")
    groups: dict[bytes, list[int]] = {}
    for index, digest in enumerate(digests):
        groups.setdefault(digest, []).append(index)
    kept = sum(1 for digest in groups if digest in sealed_keys)
    if not sealed_keys or kept < min_sealed_kept * len(sealed_keys):
        raise FamilySplitRefused(
            SEALED_ROWS_MISSING,
            f"it keeps {kept} of the {len(sealed_keys)} held-out inputs that data is scored "
            f"on, and a file that repeats it must keep at least {min_sealed_kept:.0%} of them",
        )
    sealed_groups = {digest for digest in groups if digest in sealed_keys}
    if len(sealed_groups) == len(groups):
        raise FamilySplitRefused(
            SPLIT_IMPOSSIBLE,
            "every row of it is held out for evaluation: nothing is left to train on",
        )
    if task == TEXT_CLASSIFICATION:
        sides: dict[str, set[bool]] = {}
        for digest, members in groups.items():
            sides.setdefault(str(rows[members[0]]["label"]), set()).add(digest in sealed_groups)
        unsealed = sorted(label for label, seen in sides.items() if True not in seen)
        untrained = sorted(label for label, seen in sides.items() if False not in seen)
        if unsealed:
            raise FamilySplitRefused(
                SPLIT_IMPOSSIBLE,
                f"no held-out row of that data has the label(s) {unsealed}, so they could not "
                "be evaluated; new labels belong in a dataset of their own",
            )
        if untrained:
            raise FamilySplitRefused(
                SPLIT_IMPOSSIBLE,
                f"every row with the label(s) {untrained} is held out, so none is left to train on",
            )
    sealed = sorted(index for digest in sealed_groups for index in groups[digest])
    sealed_set = set(sealed)
    merged = [members for members in groups.values() if len(members) > 1]
    return SealedSplit(
        train_indices=[index for index in range(len(rows)) if index not in sealed_set],
        sealed_indices=sealed,
        near_duplicate_groups=len(merged),
        near_duplicate_rows=sum(len(members) for members in merged),
    )
