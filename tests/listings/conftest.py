"""Catalogue fixtures: model versions as the studio writes them, listings in each state."""

import itertools

import pytest

from listings import services
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

_counter = itertools.count(1)


def classification_evaluation(accuracy: float, generalist: float) -> dict:
    return {
        "task": "text-classification",
        "sealed_rows": 200,
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy - 0.02},
        "intervals": {"accuracy": [accuracy - 0.05, min(1.0, accuracy + 0.05)]},
        "baselines": {
            "majority_class": {"accuracy": 0.25, "macro_f1": 0.1, "label": "a"},
            "generalist_zero_shot": {"accuracy": generalist, "macro_f1": generalist - 0.05},
        },
        "lift": {
            "over_majority_class": {
                "metric": "accuracy", "delta": accuracy - 0.25,
                "ci_low": accuracy - 0.3, "ci_high": accuracy - 0.2,
            },
            "over_generalist_zero_shot": {
                "metric": "accuracy", "delta": round(accuracy - generalist, 4),
                "ci_low": round(accuracy - generalist - 0.04, 4),
                "ci_high": round(accuracy - generalist + 0.04, 4),
            },
        },
    }  # fmt: skip


def generation_evaluation() -> dict:
    """A version 2 generation report with a graded metric (token error rate) beside exact
    match, as ``evaluation.generation_report`` writes it."""
    graded = {
        "metric": "token_error_rate",
        "value": 0.62,
        "ci_low": 0.58,
        "ci_high": 0.66,
        "lift": {"metric": "token_error_rate", "delta": 0.41, "ci_low": 0.36, "ci_high": 0.46},
    }
    return {
        "version": 2, "task": "text-generation", "sealed_rows": 200,
        "metrics": {"exact_match": 0.2, "token_error_rate": 0.21, "token_f1": 0.5},
        "intervals": {"exact_match": [0.15, 0.26], "token_error_rate": [0.18, 0.24]},
        "baselines": {
            "classic_nearest_neighbour": {
                "label": "Classic: nearest-neighbour retrieval (TF-IDF)", "method": "kNN",
                "metric": "exact_match", "value": 0.02, "ci_low": 0.0, "ci_high": 0.04,
                "rows": 200, "graded": graded,
                "lift": {"metric": "exact_match", "delta": 0.18, "ci_low": 0.12, "ci_high": 0.24},
            },
        },
        "graded_metric": {
            "name": "token_error_rate", "label": "Token error rate", "higher_is_better": False,
            "why": "answers are sequences of symbols",
        },
        "exact_match_mode": "case and punctuation ignored",
    }  # fmt: skip


def make_version(owner, accuracy: float = 0.9, generalist: float = 0.6) -> ModelVersion:
    n = next(_counter)
    dataset = Dataset.objects.create(
        owner=owner, name=f"data {n}", filename="d.csv", size_bytes=1, sha256=f"{n:064d}",
        status="ready", task="text-classification", report={"rows_total": 1000, "warnings": []},
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=n, status="succeeded",
    )  # fmt: skip
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name=f"minilm-l6:ft:{n}",
        task="text-classification", labels=["a", "b"], adapter_path=f"a/{n}",
        adapter_sha256=f"{n:064x}", adapter_size=300_000, config_path=f"c/{n}",
        config_sha256="c" * 64, config_size=500, dataset_sha256=dataset.sha256, run_record={},
        evaluation=classification_evaluation(accuracy, generalist), card="---\n---\n",
    )  # fmt: skip


def make_listing(owner, *, moderator=None, title="Radiology report triage", **fields):
    """A listing; published when a moderator is given."""
    version = make_version(owner, **{k: fields.pop(k) for k in ("accuracy", "generalist")
                                     if k in fields})  # fmt: skip
    content = {"summary": "Routes radiology reports.", "domain": "healthcare"} | fields
    listing = services.listing_create(
        owner=owner, model_version_id=version.id, title=title, **content
    )
    if moderator is not None:
        services.listing_submit(owner=owner, listing_id=listing.id)
        listing = services.listing_approve(moderator=moderator, listing_id=listing.id)
    return listing


@pytest.fixture
def published(alice, carol):
    return make_listing(alice, moderator=carol)
