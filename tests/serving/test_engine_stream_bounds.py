"""A token stream in Redis is bounded in length and in time: one entry per decoding step
that made text (at most max_new_tokens) and one end, trimmed by XADD MAXLEN to
STREAM_MAX_ENTRIES whatever is written, and expiring STREAM_TTL_SECONDS after its last
event."""

import uuid

import pytest
import redis
from django.conf import settings

from serving.engine.service import Engine
from serving.protocol import (
    STREAM_MAX_ENTRIES,
    STREAM_TTL_SECONDS,
    TEXT_GENERATION,
    GenerationParameters,
    InferenceRequest,
    Usage,
    result_from_dict,
    stream_event_done,
    stream_event_token,
    stream_key,
)
from tests.serving.conftest import new_registry


@pytest.fixture
def engine(base_sources, redis_client):
    engine = Engine(
        registry=new_registry(base_sources),
        redis=redis.Redis.from_url(settings.REDIS_URL),
        max_size=8,
        max_wait_ms=50,
    )
    yield engine
    engine.stop()


def test_a_stream_holds_at_most_its_tokens_and_one_end_and_expires(
    engine, generation_adapters, redis_client
):
    request = InferenceRequest(
        request_id=str(uuid.uuid4()), task=TEXT_GENERATION, base_model="tiny-causal",
        adapter=generation_adapters[0].ref, prompt="The quick brown fox", stream=True,
        parameters=GenerationParameters(max_new_tokens=12),
    ).to_dict()  # fmt: skip

    answer = result_from_dict(engine.infer(request, timeout=60))

    key = stream_key(request["request_id"])
    assert redis_client.xlen(key) <= answer.usage.completion_tokens + 1 <= 13
    assert 0 < redis_client.ttl(key) <= STREAM_TTL_SECONDS
    redis_client.delete(key)


def test_a_stream_is_trimmed_to_its_cap_whatever_is_written(engine, redis_client):
    # Given a writer that sends far more events than any generation makes
    request_id = str(uuid.uuid4())
    for n in range(STREAM_MAX_ENTRIES + 40):
        engine._xadd(request_id, stream_event_token(f"t{n}"))
    engine._xadd(request_id, stream_event_done("length", Usage(1, STREAM_MAX_ENTRIES + 40, 0)))

    # Then Redis keeps the newest STREAM_MAX_ENTRIES, the end among them, and its TTL
    key = stream_key(request_id)
    entries = redis_client.xrange(key)
    assert len(entries) == STREAM_MAX_ENTRIES
    assert entries[-1][1]["type"] == "done"
    assert entries[0][1]["text"] == "t41"  # 40 + 1 events over the cap were trimmed
    assert 0 < redis_client.ttl(key) <= STREAM_TTL_SECONDS
    redis_client.delete(key)
