"""Hostile files sent as a private evaluation's rows (API and portal) or as a benchmark
set's rows (the moderators' admin): the dataset upload's rules hold here too. Never
unpacked, never unpickled, never stored under the client's name; refused with the one error
shape, and nothing is half-written: no evaluation row, no rows file."""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from evidence.models import PrivateEvaluation
from tests.listings.conftest import make_listing

pytestmark = pytest.mark.django_db

ROWS_ROOT = "sealed/private-evaluations"


@pytest.fixture(autouse=True)
def private_media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def listing(alice, carol):
    return make_listing(alice, moderator=carol, title="Triage for hostile rows")


def stored() -> list[str]:
    if not default_storage.exists(ROWS_ROOT):
        return []
    folders = default_storage.listdir(ROWS_ROOT)[0]
    return [f"{d}/{f}" for d in folders for f in default_storage.listdir(f"{ROWS_ROOT}/{d}")[1]]


def post(api, user, listing, name: str, content: bytes):
    upload = SimpleUploadedFile(name, content, content_type="application/octet-stream")
    return api(user).post(
        "/api/v1/evaluations", {"file": upload, "listings": listing.slug}, format="multipart"
    )


def zipped() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rows.csv", "text,label\n" + "a,b\n" * 100_000)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("rows.jsonl", gzip.compress(b'{"text": "a", "label": "b"}\n' * 50_000), "compressed_file"),
        ("rows.csv", zipped(), "compressed_file"),
        ("rows.csv", pickle.dumps({"text": "a"}, protocol=4) + b"\x00" * 8, "binary_file"),
        ("rows.pkl", pickle.dumps([{"text": "a", "label": "b"}]), "unsupported_file_type"),
        ("rows.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", "unsupported_file_type"),
        ("rows.exe", b"MZ\x90\x00", "unsupported_file_type"),
        ("rows.csv", b"\xff\xfe\x00\x00garbage", "evaluation_rows_invalid"),
        ("rows.json", b'{"text": ' * 5000, "evaluation_rows_invalid"),
    ],
)
def test_hostile_rows_are_refused_and_nothing_is_stored(api, bob, listing, name, content, code):
    response = post(api, bob, listing, name, content)
    assert response.status_code == 422, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "file" in error["fields"]
    assert not PrivateEvaluation.objects.exists()
    assert stored() == []


def test_over_the_size_limit_is_413_before_the_body_is_read(api, bob, listing, settings):
    settings.PRIVATE_EVALUATION_MAX_UPLOAD_BYTES = 1000
    response = post(api, bob, listing, "rows.csv", b"text,label\n" + b"x" * 200_000 + b",a\n")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not PrivateEvaluation.objects.exists() and stored() == []


def test_a_hostile_filename_is_never_used_to_store_and_is_shown_sanitised(
    api, bob, listing, django_capture_on_commit_callbacks
):
    label = listing.live_version.labels[0]
    rows = b"text,label\n" + b"".join(f"row {i},{label}\n".encode() for i in range(20))
    response = post(api, bob, listing, "../../etc/\u202erows\x00.csv", rows)
    assert response.status_code == 202, response.content[:300]
    shown = response.json()["filename"]
    assert "/" not in shown and "\x00" not in shown and "\u202e" not in shown
    evaluation = PrivateEvaluation.objects.get()
    assert evaluation.rows_path == f"{ROWS_ROOT}/{evaluation.id}/rows.jsonl"


def test_the_portal_refuses_a_compressed_file_and_stores_nothing(client, bob, listing):
    client.force_login(bob)
    upload = SimpleUploadedFile("rows.csv", gzip.compress(b"text,label\na,b\n" * 1000))
    response = client.post("/evaluations/", {"file": upload, "listings": [listing.slug]})
    assert response.status_code == 422
    assert "Niche does not unpack uploads" in response.content.decode()
    assert not PrivateEvaluation.objects.exists() and stored() == []


@pytest.mark.parametrize(
    ("name", "content", "shown"),
    [
        ("rows.jsonl", gzip.compress(b'{"text": "a", "label": "b"}\n' * 50_000), "not accepted"),
        ("rows.csv", pickle.dumps({"text": "a"}, protocol=4) + b"\x00" * 8, "Not a text file"),
        ("rows.pkl", pickle.dumps([{"text": "a", "label": "b"}]), "Unsupported extension .pkl"),
    ],
)
def test_a_benchmark_set_refuses_hostile_rows_in_the_admin(client, carol, name, content, shown):
    from evidence.models import BenchmarkSet

    client.force_login(carol)
    response = client.post(
        "/admin/evidence/benchmarkset/add/",
        {
            "title": "Hostile set",
            "task": "text-classification",
            "description": "",
            "sources_json": '[{"name": "x", "url": "https://example.org", "licence": "CC0-1.0"}]',
            "rows_file": SimpleUploadedFile(name, content),
        },
    )
    assert response.status_code == 200  # the form again, with the reason
    assert not BenchmarkSet.objects.exists()
    assert not default_storage.exists("sealed/benchmarks")
    assert shown in response.content.decode()
