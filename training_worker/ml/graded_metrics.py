"""Graded metrics for generation: partial credit beside exact match, chosen by the data's shape.

Exact match gives nothing to an answer one phoneme or one comma off. Every generation report
also carries one graded metric, chosen from the training completions (never the sealed
rows) by ``choose_graded_metric``:

=======================  ======================================  ===========================
shape of the answers     metric                                  example corpus
=======================  ======================================  ===========================
case or punctuation is   chrF (character n-grams 1-6, recall     sentence restoration
the content (normalising weighted beta = 2; case and              (Moby-Dick: lowercased,
would erase the task)    punctuation count)                      unpunctuated -> as printed)
one word                 character error rate                    verb -> past tense
a sequence from a small  token error rate (edits between token   word -> ARPAbet phonemes
alphabet (<= 100 kinds)  sequences / reference tokens)           (phoneme error rate)
anything else (prose)    chrF                                    short answers, rewrites
=======================  ======================================  ===========================

Error rates are per row, capped at 1 (an answer longer than the reference cannot cost more
than the whole row), and averaged over rows, so the bootstrap resamples rows as it does for
exact match. Lower is better for error rates, higher for chrF; ``lift`` is always stated as
"better by" (baseline error minus specialist error, or specialist chrF minus baseline chrF),
so a positive lift means the specialist is better, whichever the metric.

Exact match itself is case- and punctuation-insensitive (``normalise_answer``) except where
that would erase the task (``strict_exact_match``), the same rule as chrF's first line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SYMBOL_ALPHABET_MAX = 100  # distinct tokens in the completions of a "sequence of symbols"
CHRF_ORDER = 6
CHRF_BETA = 2.0


def normalise_answer(text: str) -> str:
    """Lower-case, collapse whitespace, drop punctuation: the exact-match convention
    (``evaluation.exact_match``) and the text the error rates compare."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, item in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item != other))
            )
        previous = current
    return previous[-1]


def character_error_rate(prediction: str, reference: str) -> float:
    """Character edits / reference characters on normalised text, capped at 1."""
    predicted, expected = normalise_answer(prediction), normalise_answer(reference)
    if not expected:
        return float(bool(predicted))
    return min(1.0, edit_distance(predicted, expected) / len(expected))


def token_error_rate(prediction: str, reference: str) -> float:
    """Token edits / reference tokens on normalised text, capped at 1 (WER, PER)."""
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not expected:
        return float(bool(predicted))
    return min(1.0, edit_distance(predicted, expected) / len(expected))


def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF in [0, 1] (Popovic 2015): character n-grams of orders 1-6 with
    whitespace removed, case and punctuation kept; the F-beta (beta 2, recall weighted) of
    the n-gram precision and recall averaged over the orders both strings are long enough
    to have (at least order 1 of the reference: an empty answer scores 0)."""
    hypothesis, target = "".join(prediction.split()), "".join(reference.split())
    if not target:
        return float(not hypothesis)
    precisions, recalls = [], []
    for n in range(1, CHRF_ORDER + 1):
        expected = _char_ngrams(target, n)
        if not expected:
            break
        predicted = _char_ngrams(hypothesis, n)
        if not predicted and n > 1:
            break
        common = sum((predicted & expected).values())
        precisions.append(common / sum(predicted.values()) if predicted else 0.0)
        recalls.append(common / sum(expected.values()))
    precision = sum(precisions) / len(precisions)
    recall = sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    beta2 = CHRF_BETA**2
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


@dataclass(frozen=True)
class GradedMetric:
    name: str
    label: str  # for pages and cards
    higher_is_better: bool
    why: str  # one line: why this metric fits the data
    score: Callable[[str, str], float]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "higher_is_better": self.higher_is_better,
            "why": self.why,
        }

    def better_by(self, specialist: float, baseline: float) -> float:
        """How much better the specialist is (positive = better), whichever the direction."""
        return specialist - baseline if self.higher_is_better else baseline - specialist


CHRF = GradedMetric(
    "chrf", "chrF (character n-gram overlap)", True,
    "answers are text whose every character counts (case, punctuation, spelling)", chrf,
)  # fmt: skip
CHARACTER_ERROR_RATE = GradedMetric(
    "character_error_rate", "Character error rate", False,
    "answers are single words: an answer one letter off is nearly right", character_error_rate,
)  # fmt: skip
TOKEN_ERROR_RATE = GradedMetric(
    "token_error_rate", "Token error rate", False,
    "answers are sequences of symbols from a small alphabet (such as phonemes or codes): "
    "an answer one symbol off is nearly right",
    token_error_rate,
)  # fmt: skip
GRADED_METRICS = {m.name: m for m in (CHRF, CHARACTER_ERROR_RATE, TOKEN_ERROR_RATE)}


def strict_exact_match(rows: Sequence[dict]) -> bool:
    """True when normalising case and punctuation would erase the task: for at least half
    of the rows the normalised prompt already equals the normalised completion (restoring
    case and punctuation, say). Exact match then compares the answers as written."""
    if not rows:
        return False
    same = sum(normalise_answer(r["prompt"]) == normalise_answer(r["completion"]) for r in rows)
    return same * 2 >= len(rows)


def choose_graded_metric(rows: Sequence[dict]) -> GradedMetric:
    """The graded metric that fits the completions of ``rows`` (training rows): see the
    module's table. Deterministic, and never reads the sealed rows."""
    if not rows or strict_exact_match(rows):
        return CHRF
    token_lists = [normalise_answer(r["completion"]).split() for r in rows]
    lengths = sorted(len(tokens) for tokens in token_lists)
    median = lengths[len(lengths) // 2]
    if median <= 1:
        return CHARACTER_ERROR_RATE
    kinds = {token for tokens in token_lists for token in tokens}
    if len(kinds) <= SYMBOL_ALPHABET_MAX:
        return TOKEN_ERROR_RATE
    return CHRF
