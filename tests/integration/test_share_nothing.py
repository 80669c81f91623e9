"""Web and worker share nothing but Postgres, Redis and the bucket.

The web tier (gunicorn, as in production) and a Celery worker run as separate processes,
each with its own NICHE_VAR_DIR, NICHE_WORK_DIR, MODEL_CACHE_DIR and STORAGE_ROOT, and
both with STORAGE_BACKEND=s3 on moto's standalone server (an S3-compatible emulator on
127.0.0.1). Over the HTTP API: upload -> validation -> training -> evaluation -> model
version -> export bundle. Then: every file is in the bucket (the sealed split only under
the sealed prefix), the web's folders hold no file at all, and the worker's scratch is
clean. Had either side written a file to its own disk, the other could not have read it.

The worker's model cache holds the tiny causal base before it starts, as a worker image
would; the web has no model cache contents and never needs one.
"""

import hashlib
import io
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.core.management import call_command

from accounts.models import User
from accounts.services import api_key_create, user_mark_email_verified
from marketplace.storage import SEALED_PREFIX
from tests.integration.conftest import WorkerProcess
from tests.integration.web import Gunicorn
from tests.training_worker.conftest import generation_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = "tests.integration.share_nothing_settings"
SIGNING_KEY = "5Z4cZ4SjJ2O8ULbEpWp4KQf0iHMAbD1fMnc7bqR3l2A="  # no key file written on disk


def machine(root: Path) -> dict[str, str]:
    """The per-machine folders of one side, each separate."""
    folders = {
        "NICHE_VAR_DIR": root / "var",
        "NICHE_WORK_DIR": root / "work",
        "MODEL_CACHE_DIR": root / "models",
        "STORAGE_ROOT": root / "media",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    return {name: str(folder) for name, folder in folders.items()}


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


class Api:
    """The HTTP API of the web process, as a client with an API key calls it."""

    def __init__(self, base: str, key: str):
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def json(self, method: str, path: str, payload: dict | None = None):
        response = self.session.request(method, f"{self.base}{path}", json=payload, timeout=30)
        return response.status_code, response.json()

    def wait(self, path: str, done, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.json("GET", path)
            assert status == 200, body
            if done(body):
                return body
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting on {path}: {body}")


def test_upload_to_model_version_with_web_and_worker_sharing_only_postgres_redis_and_s3(
    worker_env, s3_emulator, shipped_base_models, tmp_path
):
    bucket = s3_emulator.new_bucket()
    common = (
        worker_env
        | s3_emulator.env(bucket)
        | {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "NICHE_SIGNING_KEY": SIGNING_KEY,
        }
    )
    web_dirs, worker_dirs = machine(tmp_path / "web"), machine(tmp_path / "worker")
    # The worker's cache gets the tiny base before it starts (built once per checkout).
    call_command("build_tiny_causal", verbosity=0)
    shutil.copytree(
        settings.MODEL_CACHE_DIR / "tiny-causal",
        Path(worker_dirs["MODEL_CACHE_DIR"]) / "tiny-causal",
    )
    worker = WorkerProcess(
        common | worker_dirs, "default,training", f"share-nothing-{uuid.uuid4().hex[:6]}"
    )
    web = Gunicorn(common | web_dirs, "share-nothing")
    try:
        worker.wait_ready()
        web.wait_ready()
        alice = User.objects.create_user(email="alice@example.com", password="x" * 12)
        user_mark_email_verified(user=alice)  # keys need a verified address
        api = Api(web.url, api_key_create(user=alice, name="it", scopes=["read", "train"])[1])

        # Upload (web) -> validation (worker) -> training (worker) -> version, over HTTP.
        response = api.session.post(
            f"{web.url}/api/v1/datasets",
            files={"file": ("qa.jsonl", generation_jsonl(rows=40))},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        dataset = response.json()
        dataset = api.wait(
            f"/api/v1/datasets/{dataset['id']}", lambda d: d["status"] in ("ready", "invalid"), 60
        )
        assert dataset["status"] == "ready", dataset["report"]
        status, job = api.json(
            "POST",
            "/api/v1/fine_tuning/jobs",
            {
                "base_model": "tiny-causal",
                "dataset": dataset["id"],
                "hyperparameters": {"n_epochs": 1, "batch_size": 8},
                "seed": 2,
            },
        )
        assert status == 201, job
        job = api.wait(
            f"/api/v1/fine_tuning/jobs/{job['id']}",
            lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
            120,
        )
        assert job["status"] == "succeeded", (job, worker.log_path.read_text()[-3000:])
        version_id = job["fine_tuned_model"]
        status, evaluation = api.json("GET", f"/api/v1/models/{version_id}/evaluation")
        assert status == 200 and evaluation["metrics"]["adapter_loss"] > 0, evaluation
        status, version = api.json("GET", f"/api/v1/models/{version_id}")
        assert status == 200, version

        # The web streams the adapter the worker wrote, from the bucket.
        bundle = api.session.get(f"{web.url}/api/v1/models/{version_id}/export", timeout=30)
        assert bundle.status_code == 200, bundle.text[:500]
        with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
            adapter = next(n for n in archive.namelist() if n.endswith(".safetensors"))
            adapter_sha256 = hashlib.sha256(archive.read(adapter)).hexdigest()
        expected = {f["name"]: f["sha256"] for f in version["files"]}
        assert adapter_sha256 == expected["adapter_model.safetensors"]
    finally:
        web.stop()
        worker.stop()

    # Every file is in the bucket, under the prefixes the storage layout names.
    keys = s3_emulator.keys(bucket)
    dataset_id, job_id = dataset["id"], job["id"]
    sealed = f"{SEALED_PREFIX}datasets/{dataset_id}/sealed.jsonl"
    assert {
        f"datasets/{dataset_id}/source.jsonl",
        f"datasets/{dataset_id}/train.jsonl",
        sealed,
    } <= set(keys)
    adapters = [k for k in keys if k.startswith("artifacts/sha256/")]
    assert sorted(Path(k).name for k in adapters) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    prefixes = (f"datasets/{dataset_id}/", f"checkpoints/{job_id}/", "artifacts/sha256/")
    assert all(key.startswith(prefixes) or key == sealed for key in keys), sorted(keys)
    assert [key for key in keys if "sealed" in key] == [sealed]

    # Nothing on either side's disk: no file at all on the web's; on the worker's only
    # the base model it was given, its scratch and storage folders clean.
    assert files_in(tmp_path / "web") == []
    worker_files = files_in(tmp_path / "worker")
    assert worker_files and all(f.startswith("models/tiny-causal/") for f in worker_files), (
        worker_files
    )
