"""The evaluation report: one typed reader for the JSON the platform stores on a model version.

Version 2 reports (this module's writers) carry every baseline with its interval and the
specialist's paired-bootstrap lift over it, plus ``strongest_baseline``. Older stored
reports (version 1: majority class and one generalist for classification, base-model
scores without intervals for generation) are read as they are: ``is_legacy`` is true and
pages say which baselines the evaluation did not have. No Django imports.

Stored JSON keeps ``baselines`` as an object keyed by name, in the order the report lists
them, so older readers of ``report["baselines"]["majority_class"]["accuracy"]`` still work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPORT_VERSION = 2

# Human names of the baselines, for pages and cards (never the raw key).
BASELINE_LABELS = {
    "majority_class": "Majority class",
    "classic_tfidf_logreg": "Classic: TF-IDF + logistic regression",
    "generalist_llm_zero_shot": "Generalist: instruct LLM, zero-shot",
    "generalist_embedding_zero_shot": "Generalist: embedding similarity, zero-shot",
    "generalist_zero_shot": "Generalist: zero-shot",  # version 1 reports
    "base_zero_shot": "Generalist: base model, prompted",
    "base_few_shot": "Generalist: base model, few-shot",
    "classic_nearest_neighbour": "Classic: nearest-neighbour retrieval (TF-IDF)",
}

PRIMARY_METRIC = {"text-classification": "accuracy", "text-generation": "exact_match"}
METRIC_LABELS = {"accuracy": "accuracy", "exact_match": "exact match", "macro_f1": "macro F1"}


# The order pages list baselines in (stored JSON objects may come back key-sorted from
# Postgres jsonb); names not listed here follow in their stored order.
BASELINE_ORDER = (
    "majority_class", "generalist_zero_shot", "generalist_embedding_zero_shot",
    "generalist_llm_zero_shot", "classic_tfidf_logreg",
    "base_zero_shot", "base_few_shot", "classic_nearest_neighbour",
)  # fmt: skip


def _display_order(baseline: BaselineResult) -> int:
    return BASELINE_ORDER.index(baseline.name) if baseline.name in BASELINE_ORDER else 99


def baseline_label(name: str) -> str:
    return BASELINE_LABELS.get(name, name.replace("_", " ").capitalize())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Lift:
    """Specialist minus baseline on the same sealed rows, with a paired-bootstrap interval.

    ``ci_low``/``ci_high`` is the interval shown: 95 % for a first sealed evaluation on its
    data family, Bonferroni-corrected for the evaluations on the family after that (then the
    plain 95 % one is kept as ``ci_low_uncorrected``/``ci_high_uncorrected``)."""

    metric: str
    delta: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_low_uncorrected: float | None = None
    ci_high_uncorrected: float | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> Lift | None:
        if not isinstance(raw, dict) or _number(raw.get("delta")) is None:
            return None
        return cls(
            metric=str(raw.get("metric", "")),
            delta=float(raw["delta"]),
            ci_low=_number(raw.get("ci_low")),
            ci_high=_number(raw.get("ci_high")),
            ci_low_uncorrected=_number(raw.get("ci_low_uncorrected")),
            ci_high_uncorrected=_number(raw.get("ci_high_uncorrected")),
        )

    def as_dict(self) -> dict[str, Any]:
        record = {
            "metric": self.metric,
            "delta": self.delta,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }
        if self.ci_low_uncorrected is not None or self.ci_high_uncorrected is not None:
            record["ci_low_uncorrected"] = self.ci_low_uncorrected
            record["ci_high_uncorrected"] = self.ci_high_uncorrected
        return record

    @property
    def uncorrected_interval(self) -> tuple[float | None, float | None]:
        """The plain 95 % interval (the shown one when no correction widened it)."""
        if self.ci_low_uncorrected is None and self.ci_high_uncorrected is None:
            return self.ci_low, self.ci_high
        return self.ci_low_uncorrected, self.ci_high_uncorrected

    @property
    def is_significant(self) -> bool:
        """The whole 95 % interval lies above zero."""
        return self.ci_low is not None and self.ci_low > 0


@dataclass(frozen=True)
class BaselineResult:
    """One baseline scored on the sealed rows (``rows`` of them: a costly baseline may be
    capped to the first rows, and its lift is paired on exactly those)."""

    name: str
    method: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    lift: Lift | None = None
    rows: int | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. macro_f1, the majority label

    @property
    def display_name(self) -> str:
        return self.label or baseline_label(self.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "label": self.display_name,
            "method": self.method,
            "metric": self.metric,
            "value": self.value,
            # Version 1 readers look the score up by metric name.
            self.metric: self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "rows": self.rows,
            "lift": self.lift.as_dict() if self.lift else None,
        }

    @classmethod
    def from_dict(
        cls, name: str, raw: dict, metric: str, lift: Lift | None, version: int = REPORT_VERSION
    ) -> BaselineResult:
        known = {"label", "method", "metric", "value", "ci_low", "ci_high", "rows", "lift"}
        if version < REPORT_VERSION and "label" in raw:
            # Version 1 stored the majority's predicted class under "label".
            raw = {
                **{k: v for k, v in raw.items() if k != "label"},
                "label_predicted": raw["label"],
            }
        metric = str(raw.get("metric") or metric)
        value = _number(raw.get("value", raw.get(metric)))
        return cls(
            name=name,
            method=str(raw.get("method", "")),
            metric=metric,
            value=value,
            ci_low=_number(raw.get("ci_low")),
            ci_high=_number(raw.get("ci_high")),
            lift=Lift.from_dict(raw.get("lift")) or lift,
            rows=raw.get("rows") if isinstance(raw.get("rows"), int) else None,
            label=str(raw.get("label") or baseline_label(name)),
            extra={k: v for k, v in raw.items() if k not in known and k != metric},
        )


@dataclass(frozen=True)
class Blend:
    """How a classification specialist is served: the adapter's probabilities weighted
    ``weight``, a classic TF-IDF model's ``1 - weight`` (``lexical_head.py``). Weight 1 is
    the adapter alone (``reason`` says why). ``adapter_alone`` scores the adapter without
    the lexical head on the same sealed rows, its lift being the served model's over it."""

    weight: float
    method: str = ""
    reason: str = ""
    validation_rows: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    adapter_alone: BaselineResult | None = None

    @property
    def is_blended(self) -> bool:
        return self.weight < 1.0

    @classmethod
    def from_dict(cls, raw: Any) -> Blend | None:
        if not isinstance(raw, dict) or _number(raw.get("weight")) is None:
            return None
        alone = raw.get("adapter_alone")
        return cls(
            weight=float(raw["weight"]),
            method=str(raw.get("method", "")),
            reason=str(raw.get("reason", "")),
            validation_rows=raw.get("validation_rows")
            if isinstance(raw.get("validation_rows"), int)
            else None,
            validation=dict(raw.get("validation") or {}),
            adapter_alone=BaselineResult.from_dict("adapter_alone", alone, "accuracy", None)
            if isinstance(alone, dict)
            else None,
        )

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"weight": self.weight, "method": self.method}
        if self.reason:
            record["reason"] = self.reason
        if self.validation_rows is not None:
            record["validation_rows"] = self.validation_rows
        if self.validation:
            record["validation"] = self.validation
        if self.adapter_alone is not None:
            record["adapter_alone"] = self.adapter_alone.as_dict()
        return record

    def as_public_dict(self) -> dict[str, Any]:
        alone = self.adapter_alone
        return {
            "weight": self.weight,
            "lexical_weight": round(1.0 - self.weight, 4),
            "is_blended": self.is_blended,
            "method": self.method,
            "reason": self.reason,
            "validation_rows": self.validation_rows,
            "adapter_alone": None
            if alone is None
            else {
                "metric": alone.metric,
                "value": alone.value,
                "ci_low": alone.ci_low,
                "ci_high": alone.ci_high,
                "lift": alone.lift.as_dict() if alone.lift else None,
            },
        }


@dataclass(frozen=True)
class EvaluationReport:
    """What the platform measured on a version's sealed split."""

    task: str
    sealed_rows: int | None
    metrics: dict[str, Any]
    intervals: dict[str, list[float]] = field(default_factory=dict)
    baselines: list[BaselineResult] = field(default_factory=list)
    version: int = REPORT_VERSION
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    confusion_matrix: dict[str, Any] | None = None
    skipped_baselines: list[dict[str, str]] = field(default_factory=list)
    lift: dict[str, Any] = field(default_factory=dict)  # other lifts, e.g. loss_reduction
    extra: dict[str, Any] = field(default_factory=dict)  # keys this reader does not type
    blend: Blend | None = None  # classification since the lexical head; None before
    # This evaluation's number among its owner's sealed evaluations on the data family (1:
    # the first); the lift intervals are Bonferroni-corrected for it. None: written before
    # attempts were counted, read as the first (uncorrected).
    sealed_evaluations: int | None = None

    @property
    def sealed_evaluation_number(self) -> int:
        return self.sealed_evaluations or 1

    @property
    def prior_sealed_evaluations(self) -> int:
        """Sealed evaluations its owner ran on the same data before this one."""
        return self.sealed_evaluation_number - 1

    @property
    def lift_interval_label(self) -> str:
        """How pages name the lifts' intervals."""
        m = self.sealed_evaluation_number
        if m == 1:
            return "95% interval"
        return f"95% interval, Bonferroni-corrected for {m} sealed evaluations on this data"

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC.get(self.task, "accuracy")

    @property
    def score(self) -> float | None:
        return _number(self.metrics.get(self.primary_metric))

    @property
    def score_interval(self) -> tuple[float | None, float | None]:
        interval = self.intervals.get(self.primary_metric) or [None, None]
        return _number(interval[0]), _number(interval[1])

    @property
    def is_legacy(self) -> bool:
        """Written before classic and LLM baselines were part of every evaluation."""
        return self.version < REPORT_VERSION

    @property
    def strongest_baseline(self) -> BaselineResult | None:
        """The baseline with the highest score (first listed wins a tie)."""
        scored = [b for b in self.baselines if b.value is not None]
        return max(scored, key=lambda b: b.value, default=None)

    def baseline(self, name: str) -> BaselineResult | None:
        return next((b for b in self.baselines if b.name == name), None)

    @property
    def graded_metric(self) -> dict[str, Any] | None:
        """The generation report's graded metric (partial credit beside exact match):
        its name, label, direction and why it fits, the specialist's score and interval,
        and the baseline it is closest to beating (the strongest on this metric) with the
        lift over it; None for reports without one (classification, older versions)."""
        described = self.extra.get("graded_metric")
        if not isinstance(described, dict) or not described.get("name"):
            return None
        name = str(described["name"])
        higher_is_better = bool(described.get("higher_is_better", True))
        interval = self.intervals.get(name) or [None, None]
        scored = [
            (b, b.extra["graded"])
            for b in self.baselines
            if isinstance(b.extra.get("graded"), dict)
            and _number(b.extra["graded"].get("value")) is not None
        ]
        strongest = None
        if scored:
            pick = max if higher_is_better else min
            baseline, graded = pick(scored, key=lambda pair: float(pair[1]["value"]))
            strongest = {"name": baseline.name, "label": baseline.display_name, **graded}
        return {
            "name": name,
            "label": str(described.get("label") or name.replace("_", " ")),
            "higher_is_better": higher_is_better,
            "why": str(described.get("why", "")),
            "value": _number(self.metrics.get(name)),
            "ci_low": _number(interval[0]),
            "ci_high": _number(interval[1]),
            "strongest_baseline": strongest,
        }

    def as_public_dict(self) -> dict[str, Any]:
        """What buyers and experts read (API and pages): baselines as a list with human
        names, the strongest one with the lift over it, and whether the report predates
        the classic and LLM baselines."""

        def baseline_view(b: BaselineResult) -> dict[str, Any]:
            return {
                "name": b.name,
                "label": b.display_name,
                "method": b.method,
                "metric": b.metric,
                "value": b.value,
                "ci_low": b.ci_low,
                "ci_high": b.ci_high,
                "rows": b.rows,
                "lift": b.lift.as_dict() if b.lift else None,
                "graded": b.extra.get("graded")
                if isinstance(b.extra.get("graded"), dict)
                else None,
            }

        strongest = self.strongest_baseline
        low, high = self.score_interval
        return {
            "report_version": self.version,
            "is_legacy": self.is_legacy,
            "task": self.task,
            "sealed_rows": self.sealed_rows,
            "primary_metric": self.primary_metric,
            "primary_metric_label": METRIC_LABELS.get(self.primary_metric, self.primary_metric),
            "score": self.score,
            "score_interval": [low, high],
            "metrics": self.metrics,
            "intervals": self.intervals,
            "baselines": [baseline_view(b) for b in self.baselines],
            "strongest_baseline": baseline_view(strongest) if strongest else None,
            "other_lifts": self.lift,
            "skipped_baselines": [
                {**skipped, "label": baseline_label(str(skipped.get("name", "")))}
                for skipped in self.skipped_baselines
            ],
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
            "blend": self.blend.as_public_dict() if self.blend else None,
            "graded_metric": self.graded_metric,
            "exact_match_mode": self.extra.get("exact_match_mode"),
            "sealed_evaluations": self.sealed_evaluation_number,
            "prior_sealed_evaluations": self.prior_sealed_evaluations,
            "sealed_evaluations_recorded": self.sealed_evaluations is not None,
            "lift_interval_correction": "bonferroni"
            if self.sealed_evaluation_number > 1
            else "none",
            "lift_interval_label": self.lift_interval_label,
        }

    def as_dict(self) -> dict[str, Any]:
        lifts = dict(self.lift)
        for baseline in self.baselines:
            if baseline.lift is not None:
                lifts[f"over_{baseline.name}"] = baseline.lift.as_dict()
        strongest = self.strongest_baseline
        report: dict[str, Any] = {
            **self.extra,
            "version": self.version,
            "task": self.task,
            "sealed_rows": self.sealed_rows,
            "metrics": self.metrics,
            "intervals": self.intervals,
            "baselines": {b.name: b.as_dict() for b in self.baselines},
            "strongest_baseline": strongest.name if strongest else None,
            "lift": lifts,
        }
        if strongest is not None and strongest.lift is not None:
            report["lift"]["over_strongest_baseline"] = {
                **strongest.lift.as_dict(),
                "baseline": strongest.name,
            }
        if self.per_class:
            report["per_class"] = self.per_class
        if self.confusion_matrix is not None:
            report["confusion_matrix"] = self.confusion_matrix
        if self.skipped_baselines:
            report["skipped_baselines"] = self.skipped_baselines
        if self.blend is not None:
            report["blend"] = self.blend.as_dict()
        if self.sealed_evaluations is not None:
            m = self.sealed_evaluations
            report["sealed_evaluations"] = {
                "number": m,
                "before_this_one": m - 1,
                "lift_interval": "95% family-wise, Bonferroni: percentiles "
                f"{2.5 / m:g} and {100 - 2.5 / m:g} of the paired bootstrap differences",
            }
        return report


_TYPED_KEYS = {
    "version", "task", "sealed_rows", "metrics", "intervals", "baselines", "strongest_baseline",
    "lift", "per_class", "confusion_matrix", "skipped_baselines", "blend", "sealed_evaluations",
}  # fmt: skip


def _sealed_evaluations(raw: Any) -> int | None:
    number = raw.get("number") if isinstance(raw, dict) else None
    valid = isinstance(number, int) and not isinstance(number, bool) and number >= 1
    return number if valid else None


def read_evaluation(raw: dict | None) -> EvaluationReport | None:
    """The one reader of stored evaluation JSON, version 1 or 2; None for no evaluation."""
    if not raw or not isinstance(raw, dict):
        return None
    task = str(raw.get("task", ""))
    metrics = dict(raw.get("metrics") or {})
    version = raw.get("version") if isinstance(raw.get("version"), int) else 1
    primary = PRIMARY_METRIC.get(task, "accuracy")
    raw_lift = dict(raw.get("lift") or {})
    raw_baselines = raw.get("baselines") or {}
    baselines = [
        BaselineResult.from_dict(
            name, entry, primary, Lift.from_dict(raw_lift.get(f"over_{name}")), version
        )
        for name, entry in raw_baselines.items()
        if isinstance(entry, dict)
    ]
    if task == "text-generation" and version < REPORT_VERSION and "base_exact_match" in metrics:
        # Version 1 kept the base model's scores in metrics, without per-row intervals.
        specialist, base = _number(metrics.get("exact_match")), metrics["base_exact_match"]
        lift = None
        if specialist is not None and _number(base) is not None:
            lift = Lift(metric="exact_match", delta=specialist - float(base))
        baselines.append(
            BaselineResult(
                name="base_zero_shot",
                method="base model without the adapter, prompted with the row's prompt",
                metric="exact_match",
                value=_number(base),
                lift=lift,
                label=baseline_label("base_zero_shot"),
            )
        )
    baselines.sort(key=_display_order)  # stable: unknown names keep their stored order
    other_lifts = {
        key: value
        for key, value in raw_lift.items()
        if not (key.startswith("over_") and isinstance(value, dict))
    }
    return EvaluationReport(
        task=task,
        sealed_rows=raw.get("sealed_rows"),
        metrics=metrics,
        intervals=dict(raw.get("intervals") or {}),
        baselines=baselines,
        version=version,
        per_class=dict(raw.get("per_class") or {}),
        confusion_matrix=raw.get("confusion_matrix"),
        skipped_baselines=list(raw.get("skipped_baselines") or []),
        lift=other_lifts,
        extra={key: value for key, value in raw.items() if key not in _TYPED_KEYS},
        blend=Blend.from_dict(raw.get("blend")),
        sealed_evaluations=_sealed_evaluations(raw.get("sealed_evaluations")),
    )
