"""The engine of a worker process: requests from many threads meet in mixed batches, each
gets what its adapter alone would answer, tokens stream to Redis, cancel keys are honoured,
and one bad adapter fails only its own request. (Lanes, priorities and admission:
test_engine_lanes.py; the scheduler alone: test_engine_scheduler.py.)"""

import dataclasses
import threading
import uuid

import pytest
import redis
from django.conf import settings

from serving.engine.runner import GenerationRow, generate_rows
from serving.engine.service import Engine
from serving.protocol import (
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    GenerationParameters,
    InferenceRequest,
    cancel_key,
    result_from_dict,
    stream_key,
)
from tests.serving.conftest import new_registry


@pytest.fixture
def engine(base_sources, redis_client):
    engine = Engine(
        registry=new_registry(base_sources),
        redis=redis.Redis.from_url(settings.REDIS_URL),
        max_size=8,
        max_wait_ms=200,
    )
    yield engine
    engine.stop()


def generation_request(adapter, prompt, **fields) -> dict:
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TEXT_GENERATION,
        base_model="tiny-causal",
        adapter=adapter,
        prompt=prompt,
        parameters=fields.pop("parameters", GenerationParameters(max_new_tokens=8)),
        **fields,
    ).to_dict()


def answer_all(engine, requests: list[dict]) -> list[dict]:
    answers: list[dict | None] = [None] * len(requests)

    def call(i):
        answers[i] = engine.infer(requests[i], timeout=120)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_requests_from_many_threads_share_a_batch_and_each_gets_its_adapter_alone(
    engine, generation_adapters
):
    # Given six buyers calling three different specialists (and the base) at once
    refs = [a.ref for a in generation_adapters]
    prompts = ["add 2 and 3:", "Hello", "The quick brown", "Question: what", "Numbers 0 1", "I am"]
    picks = [0, 1, 2, None, 1, 0]
    requests = [
        generation_request(refs[p] if p is not None else None, prompt)
        for prompt, p in zip(prompts, picks, strict=True)
    ]

    answers = [result_from_dict(a) for a in answer_all(engine, requests)]

    # Then they shared forward passes, and each text is what its adapter gives alone
    assert max(a.batch_size for a in answers) > 1
    base = engine.registry.base("tiny-causal", TEXT_GENERATION)
    for answer, prompt, p in zip(answers, prompts, picks, strict=True):
        alone = generate_rows(
            base,
            [
                GenerationRow(
                    prompt,
                    refs[p] if p is not None else None,
                    GenerationParameters(max_new_tokens=8),
                )
            ],
        )[0]
        assert answer.outputs.text == alone.text
        assert answer.adapter_sha256 == (refs[p].sha256 if p is not None else None)
        assert answer.usage.completion_tokens == alone.completion_tokens


def test_a_tampered_adapter_fails_only_its_own_request(engine, generation_adapters):
    good = generation_adapters[0].ref
    tampered = dataclasses.replace(generation_adapters[1].ref, sha256="f" * 64)
    answers = answer_all(
        engine,
        [generation_request(good, "Hello"), generation_request(tampered, "Hello", stream=True)],
    )
    assert "error" not in answers[0]
    assert answers[1]["error"]["code"] == "adapter_integrity"


def test_streamed_tokens_arrive_in_order_then_done(engine, generation_adapters, redis_client):
    request = generation_request(
        generation_adapters[2].ref,
        "The quick brown fox",
        stream=True,
        parameters=GenerationParameters(max_new_tokens=10),
    )
    answer = result_from_dict(engine.infer(request, timeout=60))
    entries = [fields for _, fields in redis_client.xrange(stream_key(request["request_id"]))]
    tokens = [e["text"] for e in entries if e["type"] == "token"]
    assert entries[-1]["type"] == "done" and [e["type"] for e in entries].count("done") == 1
    assert "".join(tokens) == answer.outputs.text
    assert entries[-1]["finish_reason"] == answer.outputs.finish_reason
    assert 0 < redis_client.ttl(stream_key(request["request_id"])) <= 300


def test_a_cancel_key_stops_the_request_between_decode_steps(
    engine, generation_adapters, redis_client
):
    request = generation_request(
        generation_adapters[0].ref,
        "Hello",
        stream=True,
        parameters=GenerationParameters(max_new_tokens=50),
    )
    redis_client.set(cancel_key(request["request_id"]), "1", ex=60)  # the client went away
    answer = result_from_dict(engine.infer(request, timeout=60))
    assert answer.outputs.finish_reason == "cancelled"
    assert answer.usage.completion_tokens <= 1
    last = redis_client.xrange(stream_key(request["request_id"]))[-1][1]
    assert last["type"] == "done" and last["finish_reason"] == "cancelled"


def test_classification_requests_of_several_adapters_answer_every_label(
    engine, classification_adapters
):
    requests = [
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TEXT_CLASSIFICATION,
            base_model="minilm-l6",
            adapter=adapter.ref,
            inputs=["charged twice", "app crashes"],
        ).to_dict()
        for adapter in classification_adapters[:3]
    ]
    answers = [result_from_dict(a) for a in answer_all(engine, requests)]
    for answer, adapter in zip(answers, classification_adapters[:3], strict=True):
        assert len(answer.outputs) == 2
        for output in answer.outputs:
            assert set(output.scores) == set(adapter.ref.labels)
            assert output.label == max(output.scores, key=output.scores.get)
        assert answer.usage.prompt_tokens > 0


def test_classification_without_an_adapter_and_a_past_deadline_are_errors(engine):
    no_adapter = InferenceRequest(
        request_id="r1", task=TEXT_CLASSIFICATION, base_model="minilm-l6", adapter=None,
        inputs=["x"],
    ).to_dict()  # fmt: skip
    assert engine.infer(no_adapter, timeout=60)["error"]["code"] == "invalid_request"
    late = generation_request(None, "Hello", deadline=1.0)
    assert engine.infer(late, timeout=60)["error"]["code"] == "deadline_exceeded"
    assert engine.infer({"task": "x"}, timeout=5)["error"]["code"] == "invalid_request"
