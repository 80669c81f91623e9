"""Files in an S3-compatible bucket, configured from the environment as in production.

Every test here talks HTTP to a real S3 protocol server: moto's standalone server, an
S3-compatible emulator started on 127.0.0.1 by the suite (tests/s3_emulator.py). The
storage is the django-storages backend built by marketplace/settings/object_storage.py
from the variables an operator sets (STORAGE_BACKEND=s3, AWS_*).
"""

import hashlib
import io
import os
import subprocess
import sys
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections

from accounts.services import api_key_create
from marketplace.settings.object_storage import (
    PART_BYTES,
    PART_CONCURRENCY,
    default_storage_config,
    storage_backend,
)
from marketplace.storage import SEALED_PREFIX, LocalStorage
from tests.training_worker.conftest import classification_csv, upload
from training_worker.models import Dataset, DatasetStatus

ROOT = Path(__file__).resolve().parents[2]
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


def anonymous_get(url: str) -> int:
    assert url.startswith("http://127.0.0.1:")  # the emulator, nothing else
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_dataset_lives_in_the_private_bucket_with_its_sealed_split_under_the_sealed_prefix(
    alice, api, s3_storage, s3_emulator, django_capture_on_commit_callbacks
):
    alice_api = api(alice)
    with django_capture_on_commit_callbacks(execute=True):  # validation runs inline
        response = alice_api.post(
            "/api/v1/datasets", {"file": upload("notes.csv", classification_csv())}
        )
    assert response.status_code == 202, response.json()
    dataset = Dataset.objects.get(pk=response.json()["id"])
    assert dataset.status == DatasetStatus.READY, dataset.report

    keys = s3_emulator.keys(s3_storage)
    assert set(keys) == {dataset.source_path, dataset.train_path, dataset.sealed_path}
    assert keys[dataset.source_path] == len(classification_csv())
    sealed = [key for key in keys if key.startswith(SEALED_PREFIX)]
    assert sealed == [dataset.sealed_path] == [f"sealed/datasets/{dataset.pk}/sealed.jsonl"]
    client = s3_emulator.client()
    for key in keys:  # written private: only the owner is granted anything
        grants = client.get_object_acl(Bucket=s3_storage, Key=key)["Grants"]
        assert [g["Grantee"]["Type"] for g in grants] == ["CanonicalUser"]
        assert all(g["Grantee"].get("URI") != ALL_USERS for g in grants)
        assert anonymous_get(f"{s3_emulator.endpoint_url}/{s3_storage}/{key}") == 403

    with django_capture_on_commit_callbacks(execute=True):  # its files go with it
        assert alice_api.delete(f"/api/v1/datasets/{dataset.pk}").status_code == 204
    assert s3_emulator.keys(s3_storage) == {}


def test_urls_are_presigned_and_short_lived_and_a_sealed_split_never_gets_one(
    s3_storage, s3_emulator, settings, tmp_path
):
    name = default_storage.save("datasets/x/train.jsonl", ContentFile(b'{"text": "a"}\n'))

    url = default_storage.url(name)

    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["300"] and "X-Amz-Signature" in query
    assert anonymous_get(url) == 200
    assert anonymous_get(url.split("?")[0]) == 403
    with pytest.raises(SuspiciousFileOperation, match="sealed"):
        default_storage.url(f"{SEALED_PREFIX}datasets/x/sealed.jsonl")
    with pytest.raises(SuspiciousFileOperation, match="sealed"):
        default_storage.url("datasets/../sealed/datasets/x/sealed.jsonl")
    with pytest.raises(SuspiciousFileOperation, match="sealed"):  # the local disk alike
        LocalStorage(location=tmp_path).url("/sealed/datasets/x/sealed.jsonl")


def multipart_body_file(path: Path, file_bytes: int) -> tuple[str, str]:
    """Write a multipart body carrying a `file_bytes` CSV to `path`; its content type and
    the SHA-256 of the CSV."""
    boundary = "niche-large-upload"
    row = b'"a long clinical note about the patient",urgent\r\n'
    digest = hashlib.sha256()
    with path.open("wb") as out:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="large.csv"\r\nContent-Type: text/csv\r\n\r\n'.encode()
        )
        written = 0
        block = row * (1024 * 1024 // len(row))
        while written < file_bytes:
            piece = block[: file_bytes - written]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", digest.hexdigest()


def test_a_large_upload_streams_into_the_bucket_without_sitting_in_web_memory(
    alice, s3_storage, s3_emulator, settings, tmp_path
):
    """The web process's peak Python memory while it takes a 56 MiB upload stays under a
    bound set by the part size, not the file's: the upload is spooled in chunks (hashed
    on the way) and sent to the bucket as a multipart upload, a few parts at a time.
    (The emulator runs in a process of its own: its memory is not counted.)"""
    file_bytes = 56 * 1024 * 1024
    settings.DATASET_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
    bound = (PART_CONCURRENCY + 2) * PART_BYTES + 6 * 1024 * 1024  # 26 MiB
    body_path = tmp_path / "body"
    content_type, expected_sha256 = multipart_body_file(body_path, file_bytes)
    _, key = api_key_create(user=alice, name="upload", scopes=["train"])
    handler = WSGIHandler()  # the web tier's own entry point, as gunicorn calls it
    answer = {}

    with body_path.open("rb") as body:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/v1/datasets",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BufferedReader(body),
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(body_path.stat().st_size),
            "HTTP_AUTHORIZATION": f"Bearer {key}",
        }
        default_storage.exists("warm-up")  # botocore loads its API model once per process
        # As Django's test client does: the test's connection (and transaction) stays open.
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        tracemalloc.start()
        try:
            response = handler(environ, lambda status, headers: answer.update(status=status))
            content = b"".join(response)
            response.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)

    assert answer["status"].startswith("202"), content[:500]
    dataset = Dataset.objects.get(owner=alice)
    assert peak < bound < file_bytes / 2, f"peak {peak:,} bytes for {file_bytes:,} bytes"
    print(f"large upload: {file_bytes:,} bytes, peak traced memory {peak:,} bytes")
    assert dataset.sha256 == expected_sha256 and dataset.size_bytes == file_bytes
    stored = s3_emulator.client().get_object(Bucket=s3_storage, Key=dataset.source_path)
    assert "-" in stored["ETag"]  # a multipart upload's ETag names its part count
    digest = hashlib.sha256()
    for chunk in stored["Body"].iter_chunks(1024 * 1024):
        digest.update(chunk)
    assert digest.hexdigest() == expected_sha256


PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
    "SECRET_KEY": "p7Zq-3v9!kLm2@xR8#tW4$yN6%bC1^dF5&gH0*jK-sA7+eQ9=uI2~oP4",
    "ALLOWED_HOSTS": "niche.example.com",
    "DATABASE_URL": "postgres://niche:secret@db.example.com:5432/niche",
    "REDIS_URL": "redis://cache.example.com:6379/0",
    "NICHE_SIGNING_KEY": "5Z4cZ4SjJ2O8ULbEpWp4KQf0iHMAbD1fMnc7bqR3l2A=",
    "STRIPE_SECRET_KEY": "sk_live_placeholder_for_settings_checks",
    "STRIPE_WEBHOOK_SECRET": "whsec_placeholder_for_settings_checks",
    "EMAIL_HOST": "smtp.niche.example.com",
}
PRODUCTION_PROBE = """
import django
django.setup()
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
call_command("check", deploy=True, fail_level="WARNING")
name = default_storage.save("probe/hello.txt", ContentFile(b"hello from production"))
print("backend", type(default_storage._wrapped).__name__)
print("read", default_storage.open(name).read().decode())
"""


def test_production_settings_with_s3_pass_check_deploy_and_store_in_the_bucket(
    s3_emulator, tmp_path
):
    bucket = s3_emulator.new_bucket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_"))}
    env |= PRODUCTION_ENV | s3_emulator.env(bucket) | {"NICHE_VAR_DIR": str(tmp_path)}
    env.pop("STORAGE_BACKEND")  # production's default

    result = subprocess.run(
        [sys.executable, "-c", PRODUCTION_PROBE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "backend PrivateS3Storage" in result.stdout
    assert "read hello from production" in result.stdout
    assert list(s3_emulator.keys(bucket)) == ["probe/hello.txt"]
    assert not any(tmp_path.rglob("hello*"))  # nothing on the local disk


def test_production_refuses_to_start_without_a_bucket(tmp_path):
    """Production's default is S3: without a bucket it stops at start-up, never falling
    back to a local disk other machines cannot read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_"))}
    env |= PRODUCTION_ENV | {"NICHE_VAR_DIR": str(tmp_path)}

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode != 0
    assert "STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME" in result.stderr


S3_BUCKET = {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b"}


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"STORAGE_BACKEND": "gcs"}, "STORAGE_BACKEND='gcs' is invalid"),
        ({"STORAGE_BACKEND": "s3"}, "needs AWS_STORAGE_BUCKET_NAME"),
        (
            {
                "STORAGE_BACKEND": "s3",
                "AWS_STORAGE_BUCKET_NAME": "b",
                "AWS_DEFAULT_ACL": "public-read",
            },
            "AWS_DEFAULT_ACL='public-read' is invalid",
        ),
        (
            {
                "STORAGE_BACKEND": "s3",
                "AWS_STORAGE_BUCKET_NAME": "b",
                "AWS_S3_ADDRESSING_STYLE": "x",
            },
            "AWS_S3_ADDRESSING_STYLE='x' is invalid",
        ),
        (
            {
                "STORAGE_BACKEND": "s3",
                "AWS_STORAGE_BUCKET_NAME": "b",
                "STORAGE_URL_EXPIRE_SECONDS": "0",
            },
            "STORAGE_URL_EXPIRE_SECONDS='0' is invalid",
        ),
    ],
)
def test_storage_settings_refuse_what_would_fail_later_or_make_files_public(
    monkeypatch, variables, message
):
    for name in ("AWS_STORAGE_BUCKET_NAME", "AWS_DEFAULT_ACL", "STORAGE_URL_EXPIRE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ImproperlyConfigured, match=message):
        default_storage_config(storage_backend("local"))


def test_compose_runs_minio_creates_the_bucket_and_points_every_app_service_at_it():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["command"][0] == "server" and "healthcheck" in minio
    setup = services["minio-setup"]
    assert setup["image"].startswith("minio/mc") and setup["restart"] == "no"
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(setup["entrypoint"] if "entrypoint" in setup else setup["command"])
    assert "mc mb" in script and "${AWS_STORAGE_BUCKET_NAME" in script
    assert "mc anonymous set none" in script  # never public
    assert "mc version enable" in script  # versioned, for backups (docs/deploy.md)

    app = [name for name, s in services.items() if s.get("image") == "niche:latest"]
    assert {"web", "worker", "gpu-worker", "gpu-inference", "beat", "migrate"} <= set(app)
    for name in app:
        service = services[name]
        env = service["environment"]
        assert env["STORAGE_BACKEND"] == "s3", name
        assert env["AWS_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_S3_ADDRESSING_STYLE"] == "path", name
        assert "STORAGE_ROOT" not in env, name  # no shared disk for files any more
        assert service["depends_on"]["minio-setup"]["condition"] == (
            "service_completed_successfully"
        ), name
        # MinIO's root credentials come from the same .env variables as the app's.
    assert minio["environment"]["MINIO_ROOT_USER"] == "${AWS_ACCESS_KEY_ID}"
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == "${AWS_SECRET_ACCESS_KEY}"
    assert "minio" in compose["volumes"]
