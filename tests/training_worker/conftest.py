"""Studio fixtures: data sets as people upload them, and the tiny causal base."""

import random

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

TOPICS = {
    "cardiology": ["heart", "arrhythmia", "ecg", "murmur", "angina", "valve"],
    "dermatology": ["rash", "eczema", "mole", "psoriasis", "itchy", "lesion"],
    "orthopedics": ["fracture", "knee", "ligament", "cast", "sprain", "bone"],
}


def classification_csv(rows_per_label: int = 24, seed: int = 7) -> bytes:
    """A small separable 3-class set: each row names words of its own topic."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for label, words in TOPICS.items():
        for n in range(rows_per_label):
            picked = " ".join(rng.sample(words, 3))
            lines.append(f'"patient {n} presents with {picked} findings",{label}')
    return ("\n".join(lines) + "\n").encode()


def generation_jsonl(rows: int = 40) -> bytes:
    import json

    lines = []
    for n in range(rows):
        a, b = n, (n * 3) % 5
        lines.append(json.dumps({"prompt": f"add {a} and {b}:", "completion": f" {a + b}"}))
    return ("\n".join(lines) + "\n").encode()


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


@pytest.fixture(scope="session")
def tiny_causal_built(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        call_command("build_tiny_causal", verbosity=0)
    return settings.MODEL_CACHE_DIR / "tiny-causal"


@pytest.fixture
def shipped_base_models(transactional_db):
    """Transactional tests flush tables: put back the rows the migration registers."""
    import importlib

    from django.apps import apps

    for name in ("0002_register_base_models", "0005_register_smollm2"):
        importlib.import_module(f"training_worker.migrations.{name}").register(apps, None)


@pytest.fixture
def studio(api, django_capture_on_commit_callbacks):
    """A persona's client whose enqueued tasks run inline when the request commits."""

    class Studio:
        def __init__(self, user):
            self.client = api(user)

        def upload(self, filename: str, content: bytes) -> str:
            with django_capture_on_commit_callbacks(execute=True):
                response = self.client.post("/api/v1/datasets", {"file": upload(filename, content)})
            assert response.status_code == 202, response.json()
            return response.json()["id"]

        def create_job(self, **body):
            with django_capture_on_commit_callbacks(execute=True):
                return self.client.post("/api/v1/fine_tuning/jobs", body, format="json")

    return Studio
