"""A classification version served as a blend: trained through the studio API, stored,
described, served by the engine and exported as the one model its evaluation scored."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from django.conf import settings

from serving import gateway
from serving.engine.registry import ModelRegistry
from serving.engine.runner import ClassificationRow, classify_rows
from serving.protocol import TEXT_CLASSIFICATION
from tests.training_worker.conftest import classification_csv
from training_worker import artifacts
from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.lexical_head import LexicalHead
from training_worker.models import ModelVersion


@pytest.mark.slow
def test_a_blended_version_is_stored_served_and_exported_as_it_was_scored(alice, studio, api):
    # Given alice's notes (150 rows: enough for validation rows) and a job whose adapter
    # barely trains (one epoch at lr 1e-6), so the validation rows lean on the lexical head
    s = studio(alice)
    dataset_id = s.upload("notes.csv", classification_csv(rows_per_label=50))
    response = s.create_job(
        base_model="minilm-l6",
        dataset=dataset_id,
        hyperparameters={"n_epochs": 1, "batch_size": 16, "learning_rate": 1e-6},
        seed=3,
    )
    assert response.status_code == 201, response.json()
    job = s.client.get(f"/api/v1/fine_tuning/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]

    # Then the version carries the head, content-addressed, beside the adapter
    row = ModelVersion.objects.get(pk=job["fine_tuned_model"])
    assert row.lexical_head_path.endswith("/lexical_head.safetensors")
    stored = artifacts.read_bytes(row.lexical_head_path)
    assert hashlib.sha256(stored).hexdigest() == row.lexical_head_sha256
    assert len(stored) == row.lexical_head_size
    version = s.client.get(f"/api/v1/models/{row.pk}").json()
    assert {"name": "lexical_head.safetensors", "sha256": row.lexical_head_sha256,
            "size": row.lexical_head_size} in version["files"]  # fmt: skip
    evaluation = s.client.get(f"/api/v1/models/{row.pk}/evaluation").json()
    blend = evaluation["blend"]
    assert 0.0 <= blend["weight"] < 1.0
    assert LexicalHead.from_bytes(stored).weight == blend["weight"]
    card = s.client.get(f"/api/v1/models/{row.pk}/card").content.decode()
    assert f"Blend: what is served and scored above is {blend['weight']:.2f} x" in card
    assert f"- Lexical head SHA-256: `{row.lexical_head_sha256}`" in card
    assert "The adapter alone scores accuracy" in card

    # When the serving engine answers the sealed rows with what the gateway sends it
    _, slug, ref = gateway._served_version(row.pk)
    assert (ref.lexical_head_path, ref.lexical_head_sha256, ref.max_seq_length,
            ref.config_sha256) == (
        row.lexical_head_path, row.lexical_head_sha256,
        row.run_record["resolved_hyperparameters"]["max_seq_length"], row.config_sha256,
    )  # fmt: skip
    registry = ModelRegistry(
        resolve_base=lambda _slug: resolve_base_model_source(
            row.base_model.source, settings.MODEL_CACHE_DIR
        ),
        read_bytes=artifacts.read_bytes,
        cache_bytes=256 * 2**20,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    base = registry.base(slug, TEXT_CLASSIFICATION, registry.adapter_head(ref))
    registry.ensure_adapters(base, [ref])
    sealed = artifacts.read_jsonl(row.job.dataset.sealed_path)
    scores = classify_rows(base, [ClassificationRow(text=r["text"], adapter=ref) for r in sealed])

    # Then it serves the accuracy the evaluation certified
    predicted = [max(score, key=score.get) for score in scores]
    served = np.mean([p == r["label"] for p, r in zip(predicted, sealed, strict=True)])
    assert served == pytest.approx(evaluation["metrics"]["accuracy"], abs=1e-4)

    # And the export bundle ships the head, hashed in the signed manifest, and says how to
    # blend
    response = api(alice, scopes=["read"]).get(f"/api/v1/models/{row.pk}/export")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.read("lexical_head.safetensors") == stored
    manifest = json.loads(archive.read("MANIFEST.json"))
    assert {"name": "lexical_head.safetensors", "sha256": row.lexical_head_sha256,
            "size": row.lexical_head_size} in manifest["files"]  # fmt: skip
    described = json.loads(archive.read("base_model.json"))["blend"]
    assert described["file"] == "lexical_head.safetensors"
    assert described["adapter_weight"] == blend["weight"]
