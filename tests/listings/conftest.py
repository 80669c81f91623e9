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
