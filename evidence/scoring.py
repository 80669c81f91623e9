"""Score rows with several contenders side by side: the buyer's private evaluation and the
leaderboards share this.

Each contender is a listing's version (its adapter on its base, as serving runs it) or the
generalist (the bare base: zero-shot by label names for classification, the base prompted
with the row for generation). Every row goes through the inference engine of this process
at batch priority (only the room interactive calls leave: serving/engine/batching.py), so
what is scored is what a buyer's call would answer. The figures are the sealed
evaluation's (training_worker/ml/evaluation.py): accuracy with its percentile bootstrap
interval, macro-F1 and per-class figures for classification; the graded metric the rows'
completions call for (``choose_graded_metric``), with exact match beside it, for generation;
and the paired bootstrap difference between every pair of contenders on the same rows.

The classic baseline (TF-IDF + logistic regression; nearest neighbour for generation) is
fitted by k-fold cross-validation on the scored rows themselves: each row is predicted by a
model that never saw it. A buyer has no training rows to give, so this is the honest way to
ask "would a cheap model trained on my own rows do as well?".

Rows are read here and nowhere else: they are never logged, and never a metric's label.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from serving.protocol import (
    PRIORITY_BATCH,
    TEXT_CLASSIFICATION,
    AdapterRef,
    ErrorCode,
    GenerationParameters,
    InferenceError,
    InferenceRequest,
    result_from_dict,
)

logger = logging.getLogger(__name__)

GENERALIST_KEY = "generalist"
CLASSIC_KEY = "classic"
CLASSIFICATION_CHUNK = 16  # inputs per engine request (the engine batches requests too)
REQUESTS_IN_FLIGHT = 8
MAX_ATTEMPTS = 6  # an engine that keeps sending a request back (overloaded) fails its rows
MAX_NEW_TOKENS = 32  # as the sealed evaluation (generation_report's default)
CV_FOLDS = 5


@dataclass(frozen=True)
class Contender:
    key: str  # "listing:<slug>", "generalist", ...
    label: str  # a human name
    base_model: str  # BaseModel slug
    adapter: AdapterRef | None  # None: the generalist, the bare base
    label_map: dict[str, str] = field(default_factory=dict)  # model label -> row label


def version_contender(
    version, *, key: str, label: str, label_map: dict[str, str] | None = None
) -> Contender:
    """A listing's version as serving runs it (its adapter, lexical head and base)."""
    from serving.gateway import served_version

    _task, base_model, adapter = served_version(version.pk)
    return Contender(
        key=key, label=label, base_model=base_model, adapter=adapter, label_map=label_map or {}
    )


def generalist_contender(
    *, base_model: str, label: str = "Generalist (the base model)"
) -> Contender:
    return Contender(key=GENERALIST_KEY, label=label, base_model=base_model, adapter=None)


# --- running rows through the engine ------------------------------------------------------


@dataclass
class _Answers:
    outputs: list[str | None]  # per row: a row label / completion, None when it failed
    model_ms: list[float]  # per row: the engine's time for it
    errors: int = 0


class _Progress:
    def __init__(self, total: int, report: Callable[[int, int], None] | None):
        self.done, self.total, self.report = 0, total, report
        self._last = 0.0

    def add(self, count: int, *, force: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if self.report and (force or now - self._last >= 0.5 or self.done >= self.total):
            self._last = now
            self.report(self.done, self.total)


def _engine_call(engine, request: InferenceRequest) -> dict:
    """The engine's answer, sending the request again while the engine has no room."""
    payload: dict = {}
    for attempt in range(MAX_ATTEMPTS):
        fresh = dataclasses.replace(
            request,
            request_id=uuid.uuid4().hex,
            deadline=time.time() + settings.BATCH_ROW_TIMEOUT_SECONDS,
        )
        try:
            payload = engine.infer(fresh.to_dict())
        except Exception as exc:  # the engine answers errors as values; this is a crash
            logger.exception("evidence: an engine call raised")
            return {"error": {"code": ErrorCode.ENGINE_ERROR, "message": str(exc)[:200]}}
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if code == ErrorCode.OVERLOADED:
            time.sleep(min(float(error.get("retry_after") or 1.0), 5.0) * (attempt + 1))
            continue
        if code == ErrorCode.DEADLINE_EXCEEDED:
            continue
        return payload
    return payload


def _requests(task: str, contender: Contender, rows: list[dict], labels: list[str]):
    """(row indices, request) pairs covering every row once."""
    if task == TEXT_CLASSIFICATION:
        for start in range(0, len(rows), CLASSIFICATION_CHUNK):
            indices = list(range(start, min(start + CLASSIFICATION_CHUNK, len(rows))))
            yield (
                indices,
                InferenceRequest(
                    request_id="",
                    task=task,
                    base_model=contender.base_model,
                    adapter=contender.adapter,
                    inputs=[rows[i]["text"] for i in indices],
                    labels=list(labels) if contender.adapter is None else [],
                    priority=PRIORITY_BATCH,
                ),
            )
        return
    longest = max(len(row["completion"]) for row in rows)
    # No tokenizer here: about 2 characters a token at worst, capped as the sealed run caps.
    parameters = GenerationParameters(
        max_new_tokens=max(4, min(MAX_NEW_TOKENS, math.ceil(longest / 2) + 2)), temperature=0.0
    )
    for index, row in enumerate(rows):
        yield (
            [index],
            InferenceRequest(
                request_id="",
                task=task,
                base_model=contender.base_model,
                adapter=contender.adapter,
                prompt=row["prompt"],
                parameters=parameters,
                priority=PRIORITY_BATCH,
            ),
        )


def _answers(
    engine, task: str, contender: Contender, rows: list[dict], labels: list[str], progress
) -> _Answers:
    answers = _Answers(outputs=[None] * len(rows), model_ms=[0.0] * len(rows))
    work = list(_requests(task, contender, rows, labels))
    with ThreadPoolExecutor(max_workers=REQUESTS_IN_FLIGHT, thread_name_prefix="evidence") as pool:
        futures = [
            (indices, pool.submit(_engine_call, engine, request)) for indices, request in work
        ]
        for indices, future in futures:
            result = result_from_dict(future.result())
            if isinstance(result, InferenceError) or (
                contender.adapter is not None
                and result.adapter_sha256 not in (None, contender.adapter.sha256)
            ):
                answers.errors += len(indices)
            elif task == TEXT_CLASSIFICATION:
                per_row = result.engine_ms / max(len(indices), 1)
                for index, output in zip(indices, result.outputs, strict=True):
                    if contender.adapter is None:
                        answers.outputs[index] = output.label
                    else:
                        # A label outside the buyer's (mapped or not) counts as wrong.
                        answers.outputs[index] = contender.label_map.get(output.label, output.label)
                    answers.model_ms[index] = per_row
            else:
                answers.outputs[indices[0]] = result.outputs.text.strip()
                answers.model_ms[indices[0]] = result.engine_ms
            progress.add(len(indices))
    return answers


# --- the classic baseline, by cross-validation --------------------------------------------


def _folds(n_rows: int, k: int, seed: int, strata: Sequence[Any] | None = None) -> list[np.ndarray]:
    """k disjoint folds covering every row; stratified by ``strata`` (round robin within
    each stratum after a seeded shuffle), so each fold holds every label where it can."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(n_rows, dtype=np.int64)
    groups: dict[Any, list[int]] = {}
    for index in range(n_rows):
        groups.setdefault(strata[index] if strata is not None else 0, []).append(index)
    offset = 0
    for key in sorted(groups, key=str):
        members = np.asarray(groups[key])
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    return [np.flatnonzero(assignment == fold) for fold in range(k)]


def classic_cross_validated(task: str, rows: list[dict], labels: list[str], seed: int) -> list[str]:
    """Each row's answer from the classic baseline fitted on the other folds."""
    from training_worker.ml.baselines import (
        classic_classifier_predictions,
        nearest_neighbour_completions,
    )

    k = max(2, min(CV_FOLDS, len(rows)))
    outputs: list[str] = [""] * len(rows)
    if task == TEXT_CLASSIFICATION:
        label_ids = [labels.index(row["label"]) for row in rows]
        for fold in _folds(len(rows), k, seed, strata=label_ids):
            held = set(fold.tolist())
            train = [i for i in range(len(rows)) if i not in held]
            if len({label_ids[i] for i in train}) < 2:  # one label left: predict it
                predicted = [label_ids[train[0]]] * len(fold) if train else [0] * len(fold)
            else:
                predicted = classic_classifier_predictions(
                    [rows[i]["text"] for i in train],
                    [label_ids[i] for i in train],
                    [rows[i]["text"] for i in fold],
                    seed,
                )
            for index, label_id in zip(fold.tolist(), predicted, strict=True):
                outputs[index] = labels[label_id]
        return outputs
    for fold in _folds(len(rows), k, seed):
        held = set(fold.tolist())
        train = [i for i in range(len(rows)) if i not in held]
        completions = nearest_neighbour_completions(
            [rows[i]["prompt"] for i in train],
            [rows[i]["completion"] for i in train],
            [rows[i]["prompt"] for i in fold],
        )
        for index, completion in zip(fold.tolist(), completions, strict=True):
            outputs[index] = completion
    return outputs


# --- the figures --------------------------------------------------------------------------


def _round(value: float | None, places: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), places)


def _latency(model_ms: list[float]) -> dict[str, float | None]:
    if not model_ms:
        return {"mean": None, "p95": None}
    values = np.asarray(model_ms, dtype=float)
    return {"mean": _round(values.mean(), 1), "p95": _round(np.percentile(values, 95), 1)}


@dataclass
class _Scored:
    contender_key: str
    label: str
    outputs: list[str | None]
    model_ms: list[float]
    errors: int


def _figures(s: _Scored, rows: int, value: float, interval: tuple[float, float], **extra) -> dict:
    """One contender's figures: the metric with its interval, then what is task-specific."""
    return {
        "key": s.contender_key,
        "label": s.label,
        "value": _round(value),
        "ci_low": _round(interval[0]),
        "ci_high": _round(interval[1]),
        **extra,
        "rows_scored": rows - s.errors,
        "errors": s.errors,
        "latency_ms_per_row": _latency([ms for ms in s.model_ms if ms]),
    }


def _pairs(scored: list[_Scored], lift: Callable[[str, str], dict]) -> list[dict]:
    """The paired difference of every pair of contenders, in order (a minus b)."""
    return [
        _pair(a.contender_key, b.contender_key, lift(a.contender_key, b.contender_key))
        for i, a in enumerate(scored)
        for b in scored[i + 1 :]
    ]


def _classification_figures(
    scored: list[_Scored], rows: list[dict], labels: list[str], seed: int
) -> tuple[dict, list[dict], list[dict]]:
    from training_worker.ml import evaluation

    n_labels = len(labels) + 1  # the last id: an answer outside the buyer's labels
    index = {label: i for i, label in enumerate(labels)}
    truth = np.asarray([index[row["label"]] for row in rows], dtype=np.int64)
    predictions = {
        s.contender_key: np.asarray(
            [
                index.get(output, len(labels)) if output is not None else len(labels)
                for output in s.outputs
            ],
            dtype=np.int64,
        )
        for s in scored
    }
    contenders = []
    for s in scored:
        predicted = predictions[s.contender_key]
        per_class = evaluation.per_class_scores(truth, predicted, n_labels)
        contenders.append(
            _figures(
                s,
                len(rows),
                evaluation.accuracy(truth, predicted),
                evaluation.bootstrap_interval("accuracy", truth, predicted, n_labels, seed=seed),
                # over your labels only (an answer outside them is a miss, not a class)
                macro_f1=_round(float(np.mean(per_class["f1"][: len(labels)]))),
                per_class={
                    label: {
                        "precision": _round(per_class["precision"][i]),
                        "recall": _round(per_class["recall"][i]),
                        "f1": _round(per_class["f1"][i]),
                        "support": int(per_class["support"][i]),
                    }
                    for i, label in enumerate(labels)
                },
            )
        )
    pairs = _pairs(
        scored,
        lambda a, b: evaluation.paired_bootstrap_lift(
            "accuracy", truth, predictions[a], predictions[b], n_labels, seed=seed
        ),
    )
    metric = {
        "name": "accuracy",
        "label": "Accuracy",
        "higher_is_better": True,
        "why": "the share of your rows each model labels as you did",
    }
    return metric, contenders, pairs


def _generation_figures(
    scored: list[_Scored], rows: list[dict], seed: int
) -> tuple[dict, list[dict], list[dict]]:
    from training_worker.ml import evaluation
    from training_worker.ml.graded_metrics import choose_graded_metric, strict_exact_match

    metric = choose_graded_metric(rows)
    strict = strict_exact_match(rows)
    references = [row["completion"] for row in rows]
    per_row = {}
    contenders = []
    for s in scored:
        answers = [output if output is not None else "" for output in s.outputs]
        answered = list(zip(answers, references, strict=True))
        scores = np.asarray([metric.score(a, r) for a, r in answered])
        per_row[s.contender_key] = scores
        exact = np.asarray([evaluation.exact_match(a, r, strict) for a, r in answered])
        contenders.append(
            _figures(
                s,
                len(rows),
                scores.mean(),
                evaluation.bootstrap_mean_interval(scores, seed=seed),
                exact_match=_round(exact.mean()),
            )
        )
    pairs = _pairs(
        scored,
        lambda a, b: evaluation.paired_graded_lift(metric, per_row[a], per_row[b], seed=seed),
    )
    return metric.describe(), contenders, pairs


def _pair(a: str, b: str, lift: dict) -> dict:
    """a minus b (positive: a is better, whichever the metric's direction)."""
    low, high = lift.get("ci_low"), lift.get("ci_high")
    separated = low is not None and high is not None and (low > 0 or high < 0)
    return {
        "a": a,
        "b": b,
        "delta": _round(lift["delta"]),
        "ci_low": _round(low),
        "ci_high": _round(high),
        "separated": bool(separated),
        "better": (a if lift["delta"] > 0 else b) if separated else None,
    }


def warnings_for(rows: int, contenders: list[dict]) -> list[dict]:
    """Why these rows may not separate the contenders: too few of them, or an interval
    wider than 10 points (on a 0-1 metric)."""
    found = []
    if rows < 50:
        found.append(
            {
                "code": "few_rows",
                "message": f"{rows} rows are too few to tell these models apart: under 50 rows "
                "a few lucky answers move the score a lot. Add rows for a firmer answer.",
            }
        )
    wide = [
        c["label"]
        for c in contenders
        if c["ci_low"] is not None
        and c["ci_high"] is not None
        and c["ci_high"] - c["ci_low"] > 0.10
    ]
    if wide:
        found.append(
            {
                "code": "wide_interval",
                "message": "The range of plausible scores is wider than 10 points for "
                + ", ".join(wide)
                + ": these rows cannot separate the candidates reliably.",
            }
        )
    return found


def score_rows(
    *,
    task: str,
    rows: list[dict],
    contenders: list[Contender],
    engine=None,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
    classic_baseline: bool = True,
) -> dict[str, Any]:
    """Every contender's answers to ``rows`` and the figures (see the module docstring).

    ``rows``: {"text", "label"} (classification) or {"prompt", "completion"} (generation).
    ``progress(done, total)`` is called as rows come back (at most twice a second). A row
    a contender failed (the engine refused it for good) counts as wrong and is counted
    in its ``errors``.
    """
    if not rows:
        raise ValueError("score_rows needs at least one row")
    if engine is None:
        from serving.engine.service import engine_get

        engine = engine_get()
    labels = sorted({row["label"] for row in rows}) if task == TEXT_CLASSIFICATION else []
    tracker = _Progress(len(rows) * (len(contenders) + int(classic_baseline)), progress)
    scored = []
    for contender in contenders:
        answers = _answers(engine, task, contender, rows, labels, tracker)
        scored.append(
            _Scored(
                contender.key, contender.label, answers.outputs, answers.model_ms, answers.errors
            )
        )
    if classic_baseline:
        started = time.perf_counter()
        outputs = classic_cross_validated(task, rows, labels, seed)
        per_row_ms = (time.perf_counter() - started) * 1000 / len(rows)
        label = (
            "Classic: word-frequency model (TF-IDF + logistic regression), "
            "cross-validated on your rows"
            if task == TEXT_CLASSIFICATION
            else "Classic: the answer of your most similar other row (TF-IDF nearest neighbour), "
            "cross-validated"
        )
        scored.append(_Scored(CLASSIC_KEY, label, outputs, [per_row_ms] * len(rows), 0))
        tracker.add(len(rows), force=True)
    if task == TEXT_CLASSIFICATION:
        metric, figures, pairs = _classification_figures(scored, rows, labels, seed)
    else:
        metric, figures, pairs = _generation_figures(scored, rows, seed)
    return {
        "task": task,
        "rows": len(rows),
        "labels": labels,
        "metric": metric,
        "contenders": figures,
        "pairs": pairs,
        "warnings": warnings_for(len(rows), figures),
        "bootstrap": {"resamples": 1000, "seed": seed, "level": 0.95},
    }
