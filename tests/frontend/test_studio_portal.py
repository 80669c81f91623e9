"""The studio pages: upload, job page, model version page, owner-only."""

from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
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


def a_ready_dataset(owner, *, name: str, task: str) -> Dataset:
    return Dataset.objects.create(
        owner=owner, name=name, filename=f"{name}.csv", size_bytes=1, sha256="0" * 64,
        status="ready", task=task, train_rows=100, sealed_rows=25,
    )  # fmt: skip


class Options(HTMLParser):
    """The <option>s of one <select id=...> on a page, as attribute dicts."""

    def __init__(self, page: str, select_id: str):
        super().__init__()
        self.select_id, self.inside, self.options = select_id, False, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "select":
            self.inside = attrs.get("id") == self.select_id
        elif tag == "option" and self.inside:
            self.options.append(attrs)

    def handle_endtag(self, tag):
        if tag == "select":
            self.inside = False

    def offered(self) -> list[str]:
        return [o["value"] for o in self.options if "disabled" not in o]

    def selected(self) -> str:
        return next(o["value"] for o in self.options if "selected" in o)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("base_model", "nope", "Choose one of the base models offered."),
        ("dataset", "not-a-uuid", "Choose one of your datasets."),
        ("dataset", "6a0c6cf1-7b9a-4c84-8f6d-0d5ef3b1e0a1", "Choose one of your datasets."),
        ("n_epochs", "three", "Enter a whole number."),
        ("learning_rate", "fast", "Enter a number."),
        ("suffix", "Triage Notes!", "Lowercase letters, digits and dashes, at most 40."),
        ("suffix", "x" * 41, "at most 40 characters"),
    ],
)
def test_one_bad_field_re_renders_the_form_with_its_error(alice, field, value, message):
    dataset = a_ready_dataset(alice, name="triage", task="text-classification")
    good = {"dataset": str(dataset.id), "base_model": "minilm-l6", "suffix": "triage"}

    response = portal(alice).post("/studio/jobs/", good | {field: value})

    assert response.status_code == 422
    page = response.content.decode()
    assert message in page
    assert 'id="fine-tune-form"' in page
    assert FineTuningJob.objects.count() == 0


def test_a_base_model_that_does_not_fit_the_dataset_is_a_form_error(alice):
    dataset = a_ready_dataset(alice, name="faq answers", task="text-generation")

    response = portal(alice).post(
        "/studio/jobs/", {"dataset": str(dataset.id), "base_model": "minilm-l6"}
    )

    assert response.status_code == 422
    page = response.content.decode()
    assert "does not support text-generation" in page and "Tiny causal" in page
    assert FineTuningJob.objects.count() == 0


def test_a_well_formed_job_form_starts_a_job(alice):
    dataset = a_ready_dataset(alice, name="triage", task="text-classification")

    response = portal(alice).post(
        "/studio/jobs/",
        {"dataset": str(dataset.id), "base_model": "minilm-l6", "suffix": "Triage",
         "n_epochs": "2", "learning_rate": ""},
    )  # fmt: skip

    job = FineTuningJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/studio/jobs/{job.id}/"
    assert (job.dataset, job.base_model.slug, job.suffix) == (dataset, "minilm-l6", "triage")
    assert job.hyperparameters["n_epochs"] == 2  # the empty learning rate is the default


def test_the_fine_tune_form_offers_only_the_bases_that_fit_the_chosen_dataset(alice):
    a_ready_dataset(alice, name="triage", task="text-classification")
    newest = a_ready_dataset(alice, name="faq answers", task="text-generation")

    page = portal(alice).get("/studio/").content.decode()

    datasets, bases = Options(page, "id_dataset"), Options(page, "id_base_model")
    assert datasets.selected() == str(newest.id)  # the newest dataset comes first
    # The real pretrained generation base comes first; the tiny one stays for quick tries.
    assert bases.offered() == ["smollm2-135m-instruct", "tiny-causal"]
    assert bases.selected() == "smollm2-135m-instruct"
    assert {o["value"]: o["data-tasks"] for o in bases.options} == {
        "minilm-l6": "text-classification",
        "smollm2-135m-instruct": "text-generation",
        "tiny-causal": "text-generation",
    }  # what the page's script needs to re-offer bases when the dataset changes
    assert "studio.js" in page


def test_the_upload_help_is_one_paragraph_of_prose(alice):
    page = portal(alice).get("/studio/").content.decode()
    css = (Path(settings.BASE_DIR) / "frontend/static/frontend/niche.css").read_text()

    help_text = page[page.index('id="upload-help"') : page.index("</p>", page.index("upload-help"))]
    assert "<code>text,label</code>, or JSONL with <code>" in help_text
    # Field rows stack label over input; a rule for every <p> in a form broke the help
    # text into one line per <code>.
    assert ".stack p {" not in css and ".stack p:has(> label)" in css


def test_model_version_page_draws_the_comparison_chart(alice):
    version = a_version(alice)

    page = portal(alice).get(f"/studio/models/{version.id}/").content.decode()

    assert 'id="comparison-chart"' in page
    assert "This specialist" in page and "Majority class" in page and "0.900" in page
    assert "over_majority_class" not in page  # lift rows carry human names
    assert 'Generalist: zero-shot <span class="muted">(strongest)' in page
    assert 'data-testid="legacy-evaluation"' in page  # a version 1 report says so
    assert version.adapter_sha256 in page


def test_job_page_has_the_live_progress_hooks(alice):
    version = a_version(alice)

    page = portal(alice).get(f"/studio/jobs/{version.job_id}/").content.decode()

    assert f'data-job-url="/api/v1/fine_tuning/jobs/{version.job_id}"' in page
    assert 'id="loss-chart"' in page and "job.js" in page
    assert 'id="validation-chart"' in page  # the validation curve beside the loss curve


def test_mallory_gets_404_on_alices_studio_pages(alice, mallory):
    version = a_version(alice)
    client = portal(mallory)

    assert client.get(f"/studio/models/{version.id}/").status_code == 404
    assert client.get(f"/studio/jobs/{version.job_id}/").status_code == 404
    assert client.get(f"/studio/datasets/{version.job.dataset_id}/").status_code == 404
    assert client.post(f"/studio/jobs/{version.job_id}/cancel/").status_code == 302
    version.job.refresh_from_db()
    assert version.job.cancel_requested_at is None
