"""Datasets: upload, validation report, sealed split, privacy, size limit."""

import pytest
from django.core.files.storage import default_storage

from tests.training_worker.conftest import classification_csv, generation_jsonl, upload
from training_worker import artifacts
from training_worker.models import Dataset


def post_dataset(client, filename: str, content: bytes, **extra):
    return client.post("/api/v1/datasets", {"file": upload(filename, content), **extra})


@pytest.fixture
def upload_as(api, django_capture_on_commit_callbacks):
    """Upload as a persona and run the validation task the upload enqueues."""

    def do(user, filename: str, content: bytes, **extra):
        client = api(user)
        with django_capture_on_commit_callbacks(execute=True):
            response = post_dataset(client, filename, content, **extra)
        return client, response

    return do


def test_alice_uploads_a_csv_and_gets_a_ready_dataset_with_a_sealed_split(alice, upload_as):
    client, response = upload_as(alice, "notes.csv", classification_csv())

    assert response.status_code == 202
    assert response.json()["status"] == "uploaded"
    body = client.get(f"/api/v1/datasets/{response.json()['id']}").json()
    assert body["status"] == "ready"
    assert body["task"] == "text-classification"
    assert body["name"] == "notes.csv"
    assert body["rows_usable"] == 72
    assert body["sealed_rows"] + body["train_rows"] == 72
    assert body["sealed_rows"] == 14  # 20% of 72, rounded down; every label on both sides
    assert body["labels"] == ["cardiology", "dermatology", "orthopedics"]
    assert body["report"]["label_distribution"] == {
        "cardiology": 24, "dermatology": 24, "orthopedics": 24,
    }  # fmt: skip
    assert len(body["report"]["sealed_split"]["fingerprint"]) == 64
    dataset = Dataset.objects.get(pk=body["id"])
    assert dataset.owner == alice
    assert len(artifacts.read_jsonl(dataset.sealed_path)) == 14
    sealed = {row["label"] for row in artifacts.read_jsonl(dataset.sealed_path)}
    assert sealed == {"cardiology", "dermatology", "orthopedics"}


def test_the_split_is_deterministic_for_the_same_file(alice, upload_as):
    _, first = upload_as(alice, "a.csv", classification_csv())
    _, second = upload_as(alice, "b.csv", classification_csv())

    one, two = (Dataset.objects.get(pk=r.json()["id"]) for r in (first, second))
    assert one.split_fingerprint == two.split_fingerprint
    assert artifacts.read_jsonl(one.sealed_path) == artifacts.read_jsonl(two.sealed_path)


def test_jsonl_generation_task_is_inferred(alice, upload_as):
    client, response = upload_as(alice, "qa.jsonl", generation_jsonl(), name="Arithmetic")

    body = client.get(f"/api/v1/datasets/{response.json()['id']}").json()
    assert body["status"] == "ready"
    assert body["task"] == "text-generation"
    assert body["name"] == "Arithmetic"
    assert body["sealed_rows"] == 8


@pytest.mark.parametrize(
    ("filename", "content", "code"),
    [
        ("bad.csv", b"text,label\nfine,a\nfine again,a\n\xff\xfe broken,b\n", "invalid_encoding"),
        ("nolabel.csv", b"text,category\nhello,a\nworld,b\n", "missing_column"),
        ("empty.csv", b"", "empty_file"),
        (
            "rare.csv",
            (
                "text,label\n" + "".join(f"row {n},common\n" for n in range(12)) + "lonely,rare\n"
            ).encode(),
            "label_too_rare",
        ),
    ],
)
def test_broken_files_end_invalid_with_a_report(alice, upload_as, filename, content, code):
    client, response = upload_as(alice, filename, content)

    body = client.get(f"/api/v1/datasets/{response.json()['id']}").json()
    assert body["status"] == "invalid"
    assert code in [error["code"] for error in body["report"]["errors"]]
    dataset = Dataset.objects.get(pk=body["id"])
    assert dataset.sealed_path == "" and dataset.train_path == ""


def test_bad_utf8_report_gives_the_byte_offset(alice, upload_as):
    content = b"text,label\nfine,a\nfine again,a\n\xff\xfe broken,b\n"
    client, response = upload_as(alice, "bad.csv", content)

    error = client.get(f"/api/v1/datasets/{response.json()['id']}").json()["report"]["errors"][0]
    assert error["byte_offset"] == content.index(b"\xff")
    assert error["line"] == 4


def test_a_51_mb_upload_gets_413_and_nothing_is_stored(alice, api):
    client = api(alice)
    before = (
        set(default_storage.listdir("datasets")[0]) if default_storage.exists("datasets") else set()
    )
    big = b"text,label\n" + b"x" * (51 * 1024 * 1024) + b",a\n"

    response = post_dataset(client, "big.csv", big)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert Dataset.objects.count() == 0
    after = (
        set(default_storage.listdir("datasets")[0]) if default_storage.exists("datasets") else set()
    )
    assert after == before


def test_unsupported_extension_is_422(alice, api):
    response = post_dataset(api(alice), "notes.pkl", b"\x80\x04")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unsupported_file_type"
    assert Dataset.objects.count() == 0


def test_mallory_cannot_see_or_delete_alices_dataset(alice, mallory, upload_as, api):
    _, response = upload_as(alice, "notes.csv", classification_csv())
    dataset_id = response.json()["id"]
    client = api(mallory)

    assert client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert client.get("/api/v1/datasets").json()["data"] == []
    assert Dataset.objects.filter(pk=dataset_id, deleted_at__isnull=True).exists()


def test_a_read_only_key_cannot_upload(alice, api):
    response = post_dataset(api(alice, scopes=["read"]), "notes.csv", classification_csv())

    assert response.status_code == 403
    assert Dataset.objects.count() == 0


def test_deleting_an_unused_dataset_removes_row_and_files(
    alice, upload_as, django_capture_on_commit_callbacks
):
    client, response = upload_as(alice, "notes.csv", classification_csv())
    dataset = Dataset.objects.get(pk=response.json()["id"])
    paths = [dataset.source_path, dataset.train_path, dataset.sealed_path]
    assert all(default_storage.exists(p) for p in paths)

    with django_capture_on_commit_callbacks(execute=True):
        deleted = client.delete(f"/api/v1/datasets/{dataset.id}")

    assert deleted.status_code == 204
    assert not Dataset.objects.filter(pk=dataset.id).exists()
    assert client.get(f"/api/v1/datasets/{dataset.id}").status_code == 404
    assert not any(default_storage.exists(p) for p in paths)


def test_a_dataset_left_validating_by_a_dead_worker_is_validated_again(
    alice, api, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from training_worker import services

    response = post_dataset(api(alice), "notes.csv", classification_csv())  # task not run
    Dataset.objects.filter(pk=response.json()["id"]).update(
        status="validating", validation_started_at=timezone.now() - timedelta(minutes=30)
    )

    with django_capture_on_commit_callbacks(execute=True):
        swept = services.datasets_sweep_stuck()

    assert swept == {"datasets_resent": 1, "datasets_given_up": 0}
    assert Dataset.objects.get(pk=response.json()["id"]).status == "ready"
    assert services.datasets_sweep_stuck() == {"datasets_resent": 0, "datasets_given_up": 0}
