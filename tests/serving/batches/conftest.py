"""Batch fixtures: alice's listings, bob's licences and keys, and JSONL files of requests.

alice (expert) sells, bob buys and sends batches, carol moderates, mallory is a stranger.
"""

import io
import json

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures: real worker processes)
    inference_workers,
    redis_url,
    shipped_base_models,
    worker_env,
)
from tests.serving.gateway.conftest import (  # noqa: F401  (fixtures)
    bob_licence,
    drafting,
    key_for,
    real_redis,
    tasks_through_the_broker,
    triage,
)
from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  (fixture)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def chat_line(custom_id: str, model: str, text: str = "Write a clause.", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]} | body,
    }


def predict_line(custom_id: str, listing: str, inputs, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": f"/api/v1/models/{listing}/predict",
        "body": {"inputs": inputs} | body,
    }


def upload(client, key: str, content: bytes, *, purpose: str = "batch", name="requests.jsonl"):
    """POST /v1/files as the openai client sends it (multipart: file and purpose)."""
    handle = io.BytesIO(content)
    handle.name = name
    return client.post(
        "/v1/files",
        {"file": handle, "purpose": purpose},
        format="multipart",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def create_batch(client, key: str, file_id: str, endpoint: str, **extra):
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"} | extra
    return client.post("/v1/batches", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def bob_key(bob) -> str:
    return key_for(bob, scopes=("infer",))
