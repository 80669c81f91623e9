"""serving.tasks.infer through Redis to a real inference worker process (threads pool):
messages sent at once meet in one mixed batch, and each answer is its adapter's alone."""

import dataclasses
import uuid
from pathlib import Path

import pytest
import torch

from serving.engine.runner import ClassificationRow, classify_rows
from serving.protocol import TASK_NAME, TEXT_CLASSIFICATION, InferenceRequest, result_from_dict
from tests.integration.conftest import (  # noqa: F401  (fixtures)
    INFERENCE_POOL_ARGS,
    WorkerProcess,
    redis_url,
    send_tasks_to_the_broker,
    worker_env,
)
from tests.serving.conftest import new_registry
from training_worker.artifacts import store_content_addressed

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def inference_worker(worker_env, shipped_minilm):  # noqa: F811
    # A wide batching window so that the messages below surely meet in one batch.
    env = worker_env | {"SERVING_BATCH_MAX_WAIT_MS": "400"}
    worker = WorkerProcess(env, "inference", f"inf-{uuid.uuid4().hex[:6]}", INFERENCE_POOL_ARGS)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def shipped_minilm(transactional_db):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("training_worker.migrations.0002_register_base_models")
    migration.register(apps, None)


def stored(ref):
    """The adapter's files in Django storage, as a published version holds them."""
    adapter_name, sha256, _ = store_content_addressed(Path(ref.adapter_path))
    config_name, _, _ = store_content_addressed(Path(ref.config_path))
    assert sha256 == ref.sha256
    return dataclasses.replace(ref, adapter_path=adapter_name, config_path=config_name)


def test_messages_sent_at_once_share_a_mixed_batch_on_the_worker(
    inference_worker, classification_adapters, base_sources
):
    from marketplace.celery import app

    # Given three of alice's specialists published (files in storage)
    refs = [stored(a.ref) for a in classification_adapters[:3]]
    texts = ["charged twice", "app crashes on start", "lovely release", "refund", "error 500"]
    picks = [0, 1, 2, 1, 0]
    requests = [
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TEXT_CLASSIFICATION,
            base_model="minilm-l6",
            adapter=refs[p],
            inputs=[text],
        )
        for text, p in zip(texts, picks, strict=True)
    ]
    tampered = dataclasses.replace(refs[2], sha256="e" * 64)
    requests.append(dataclasses.replace(requests[0], request_id="mallory", adapter=tampered))

    # When five buyers and mallory call at once
    sent = [app.send_task(TASK_NAME, args=[r.to_dict()]) for r in requests]
    answers = [result_from_dict(s.get(timeout=120)) for s in sent]

    # Then the honest calls shared one forward pass, and each is its adapter's alone
    assert answers[-1].code == "adapter_integrity"
    honest = answers[:-1]
    assert max(a.batch_size for a in honest) > 1
    registry = new_registry(base_sources)
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    local = [a.ref for a in classification_adapters[:3]]
    registry.ensure_adapters(base, local)
    for answer, text, p in zip(honest, texts, picks, strict=True):
        alone = classify_rows(base, [ClassificationRow(text=text, adapter=local[p])])[0]
        assert answer.adapter_sha256 == refs[p].sha256
        got = torch.tensor([answer.outputs[0].scores[label] for label in local[p].labels])
        want = torch.tensor([alone[label] for label in local[p].labels])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
