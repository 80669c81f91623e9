"""The studio pages: upload, job page, model version page, owner-only."""

from django.test import Client

from tests.training_worker.conftest import classification_csv, upload
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

EVALUATION = {
    "task": "text-classification",
    "sealed_rows": 30,
    "metrics": {"accuracy": 0.9, "macro_f1": 0.88},
    "intervals": {"accuracy": [0.8, 0.97], "macro_f1": [0.75, 0.95]},
    "per_class": {"a": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 15}},
    "baselines": {
        "majority_class": {"accuracy": 0.5, "macro_f1": 0.33, "label": "a"},
        "generalist_zero_shot": {"accuracy": 0.6, "macro_f1": 0.5, "method": "embedding"},
    },
    "lift": {
        "over_majority_class": {"metric": "accuracy", "delta": 0.4, "ci_low": 0.3, "ci_high": 0.5}
    },
}


def portal(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def a_version(owner) -> ModelVersion:
    dataset = Dataset.objects.create(
        owner=owner, name="d", filename="d.csv", size_bytes=1, sha256="0" * 64, status="ready",
        task="text-classification",
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug="minilm-l6"), dataset=dataset,
        task="text-classification", seed=1, status="succeeded",
    )  # fmt: skip
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name="minilm-l6:ft:abc",
        task="text-classification", labels=["a", "b"], adapter_path="x", adapter_sha256="a" * 64,
        adapter_size=300_000, config_path="y", config_sha256="b" * 64, config_size=500,
        dataset_sha256="0" * 64, run_record={}, evaluation=EVALUATION, card="---\nlicense: x\n---",
    )  # fmt: skip


def test_alice_uploads_through_the_portal_and_sees_the_report(
    alice, django_capture_on_commit_callbacks
):
    client = portal(alice)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/studio/datasets/", {"file": upload("notes.csv", classification_csv())}
        )

    dataset = Dataset.objects.get(owner=alice)
    assert response.status_code == 302
    assert response["Location"] == f"/studio/datasets/{dataset.id}/"
    page = client.get(response["Location"]).content.decode()
    assert "ready" in page and "cardiology" in page
    studio = client.get("/studio/").content.decode()
    assert "Start fine-tuning" in studio and "notes.csv" in studio


def test_a_broken_upload_shows_its_errors(alice, django_capture_on_commit_callbacks):
    client = portal(alice)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/studio/datasets/", {"file": upload("bad.csv", b"text\nonly text\n")})

    dataset = Dataset.objects.get(owner=alice)
    page = client.get(f"/studio/datasets/{dataset.id}/").content.decode()
    assert "invalid" in page and "missing_column" in page


def test_job_form_errors_come_back_as_messages(alice):
    client = portal(alice)

    response = client.post(
        "/studio/jobs/", {"base_model": "nope", "dataset": "not-a-uuid"}, follow=True
    )

    assert "No enabled base model" in response.content.decode()
    assert FineTuningJob.objects.count() == 0


def test_model_version_page_draws_the_comparison_chart(alice):
    version = a_version(alice)

    page = portal(alice).get(f"/studio/models/{version.id}/").content.decode()

    assert 'id="comparison-chart"' in page
    assert "This specialist" in page and "Majority class" in page and "0.900" in page
    assert "over_majority_class" in page
    assert version.adapter_sha256 in page


def test_job_page_has_the_live_progress_hooks(alice):
    version = a_version(alice)

    page = portal(alice).get(f"/studio/jobs/{version.job_id}/").content.decode()

    assert f'data-job-url="/api/v1/fine_tuning/jobs/{version.job_id}"' in page
    assert 'id="loss-chart"' in page and "job.js" in page


def test_mallory_gets_404_on_alices_studio_pages(alice, mallory):
    version = a_version(alice)
    client = portal(mallory)

    assert client.get(f"/studio/models/{version.id}/").status_code == 404
    assert client.get(f"/studio/jobs/{version.job_id}/").status_code == 404
    assert client.get(f"/studio/datasets/{version.job.dataset_id}/").status_code == 404
    assert client.post(f"/studio/jobs/{version.job_id}/cancel/").status_code == 302
    version.job.refresh_from_db()
    assert version.job.cancel_requested_at is None
