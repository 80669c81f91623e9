"""Alice cannot learn or steer which of her rows are sealed for evaluation."""

import csv
import io
import json

import pytest

from tests.training_worker.conftest import classification_csv, upload
from training_worker import artifacts
from training_worker.models import Dataset


@pytest.fixture
def upload_ready(api, django_capture_on_commit_callbacks):
    """Upload as alice, run validation, return the dataset row."""

    def do(user, content: bytes, filename: str = "notes.csv") -> Dataset:
        client = api(user)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/api/v1/datasets", {"file": upload(filename, content)})
        assert response.status_code == 202, response.json()
        return Dataset.objects.get(pk=response.json()["id"])

    return do


def sealed_texts(dataset: Dataset) -> list[str]:
    return sorted(row["text"] for row in artifacts.read_jsonl(dataset.sealed_path))


def test_the_report_alice_reads_never_contains_the_seed(alice, api, upload_ready):
    dataset = upload_ready(alice, classification_csv())

    body = api(alice).get(f"/api/v1/datasets/{dataset.pk}").json()

    assert body["status"] == "ready"
    sealed_split = body["report"]["sealed_split"]
    assert "seed" not in sealed_split
    assert str(dataset.split_seed) not in json.dumps(body)
    assert str(int(dataset.sha256[:12], 16)) not in json.dumps(body)
    assert sealed_split["near_duplicate_groups"] == 0


def test_the_split_depends_on_the_server_secret_not_only_on_the_file(alice, settings, upload_ready):
    settings.SEALED_SPLIT_SECRET = "deployment-one"
    first = upload_ready(alice, classification_csv())
    again = upload_ready(alice, classification_csv())
    settings.SEALED_SPLIT_SECRET = "deployment-two"
    elsewhere = upload_ready(alice, classification_csv())

    assert first.sha256 == again.sha256 == elsewhere.sha256
    assert sealed_texts(first) == sealed_texts(again)
    assert first.split_fingerprint == again.split_fingerprint
    assert sealed_texts(first) != sealed_texts(elsewhere)
    assert first.split_fingerprint != elsewhere.split_fingerprint


def test_near_copies_of_a_row_never_straddle_the_split(alice, upload_ready):
    rows = list(csv.reader(io.StringIO(classification_csv().decode())))
    text, label = rows[1]
    # alice pads her file with copies that differ only in case, spacing and punctuation
    rows += [[f"{text.upper()}!!!", label], [f"  {text.replace(' ', '  ')} .", label]]
    out = io.StringIO()
    csv.writer(out).writerows(rows)

    dataset = upload_ready(alice, out.getvalue().encode())

    def letters(value: str) -> str:
        return "".join(ch for ch in value.lower() if ch.isalnum())

    def copies(path):
        return [r for r in artifacts.read_jsonl(path) if letters(r["text"]) == letters(text)]

    on_sealed, on_train = copies(dataset.sealed_path), copies(dataset.train_path)
    assert sorted([len(on_sealed), len(on_train)]) == [0, 3]
    assert dataset.report["sealed_split"]["near_duplicate_groups"] == 1
    assert dataset.report["sealed_split"]["near_duplicate_rows"] == 3


@pytest.mark.slow
def test_neither_the_evaluation_nor_the_card_shows_the_seed(
    alice, api, upload_ready, django_capture_on_commit_callbacks
):
    dataset = upload_ready(alice, classification_csv(rows_per_label=10))
    client = api(alice)
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(
            "/api/v1/fine_tuning/jobs",
            {
                "base_model": "minilm-l6",
                "dataset": str(dataset.pk),
                "hyperparameters": {"n_epochs": 1},
            },
            format="json",
        )
    job = client.get(f"/api/v1/fine_tuning/jobs/{created.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]

    version = job["fine_tuned_model"]
    evaluation = client.get(f"/api/v1/models/{version}/evaluation").json()
    card = client.get(f"/api/v1/models/{version}/card").content.decode()

    assert evaluation["dataset"]["sha256"] == dataset.sha256
    assert "split_seed" not in evaluation["dataset"]
    assert str(dataset.split_seed) not in json.dumps(evaluation)
    assert str(dataset.split_seed) not in card and "split seed" not in card
