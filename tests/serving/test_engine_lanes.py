"""The engine's lanes: iteration-level batching of generation (rows join a running batch
and leave it at any step, each making exactly its own tokens), classification beside it,
priorities, admission control, per-base prompt limits and adapter pins (tiny models, CPU)."""

import threading
import time
import uuid

import pytest
import redis
import torch
from django.conf import settings

from serving.engine.runner import (
    DecodeBatch,
    GenerationRow,
    RowState,
    context_limit,
    generate_rows,
)
from serving.engine.service import Engine
from serving.protocol import (
    PRIORITY_BATCH,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    GenerationParameters,
    InferenceRequest,
    cancel_key,
    result_from_dict,
    stream_key,
)
from tests.serving.conftest import new_registry
from training_worker.ml import prompts

LONG_PROMPT = "Question: what is the capital of France? Answer with one word:"


@pytest.fixture
def make_engine(base_sources):
    engines = []

    def make(**options) -> Engine:
        options = {"max_size": 8, "max_wait_ms": 5} | options
        engine = Engine(
            registry=new_registry(base_sources),
            redis=redis.Redis.from_url(settings.REDIS_URL),
            **options,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def generation(adapter, prompt, max_new_tokens=8, **fields) -> InferenceRequest:
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TEXT_GENERATION,
        base_model="tiny-causal",
        adapter=adapter,
        prompt=prompt,
        parameters=GenerationParameters(max_new_tokens=max_new_tokens),
        **fields,
    )


def alone(base, adapter, prompt, max_new_tokens, **row_options):
    row = GenerationRow(prompt, adapter, GenerationParameters(max_new_tokens=max_new_tokens))
    for key, value in row_options.items():
        setattr(row, key, value)
    return generate_rows(base, [row])[0]


def state_for(base, adapter, prompt, max_new_tokens, stop_at_eos=True) -> RowState:
    row = GenerationRow(
        prompt,
        adapter,
        GenerationParameters(max_new_tokens=max_new_tokens),
        stop_at_eos=stop_at_eos,
    )
    return RowState(row, prompts.encode_rendered(base.tokenizer, [prompt])[0], base.device)


def run_to_end(batch: DecodeBatch) -> None:
    while len(batch):
        batch.step()


def wait_until(condition, seconds=30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the engine did not get there"
        time.sleep(0.002)


@pytest.fixture
def loaded(registry, generation_adapters):
    base = registry.base("tiny-causal", TEXT_GENERATION)
    refs = [a.ref for a in generation_adapters]
    registry.ensure_adapters(base, refs)
    return base, refs


# ----------------------------------------------------------------- the decode batch
def test_a_request_that_joins_a_running_batch_mid_way_makes_the_tokens_it_makes_alone(loaded):
    base, refs = loaded
    # Given two rows decoding together for five steps (the second leaves early)
    first = state_for(base, refs[0], "The quick brown fox", 30, stop_at_eos=False)
    second = state_for(base, None, "Hello", 8, stop_at_eos=False)
    batch = DecodeBatch(base)
    batch.join([first, second])
    for _ in range(5):
        batch.step()

    # When a request with a longer prompt joins (the running rows get left padding),
    # then, after the second row left, one with a shorter prompt (the joiner gets it)
    joiner_long = state_for(base, refs[1], LONG_PROMPT, 20, stop_at_eos=False)
    batch.join([joiner_long])
    assert len(batch) == 3
    while second in batch.states:
        batch.step()
    joiner_short = state_for(base, refs[2], "Hi", 12, stop_at_eos=False)
    batch.join([joiner_short])
    run_to_end(batch)

    # Then every row made exactly the tokens it makes alone (greedy)
    for state, (adapter, prompt, n) in [
        (first, (refs[0], "The quick brown fox", 30)),
        (second, (None, "Hello", 8)),
        (joiner_long, (refs[1], LONG_PROMPT, 20)),
        (joiner_short, (refs[2], "Hi", 12)),
    ]:
        reference = alone(base, adapter, prompt, n, stop_at_eos=False)
        assert state.token_ids == reference.token_ids
        assert state.text == reference.text and state.finish_reason == "length"
        assert len(state.token_ids) == n
    assert len({tuple(s.token_ids) for s in (first, joiner_long, joiner_short)}) == 3
    assert first.peak_rows == 3 and joiner_short.peak_rows == 3


def test_a_preempted_row_prefilled_again_goes_on_with_its_own_tokens(loaded):
    base, refs = loaded
    preempted = state_for(base, refs[0], "The quick brown fox", 24, stop_at_eos=False)
    other = state_for(base, refs[1], "Hello", 24, stop_at_eos=False)
    batch = DecodeBatch(base)
    batch.join([preempted, other])
    for _ in range(6):
        batch.step()

    batch.leave([preempted])  # its row is given to someone else for a while
    for _ in range(4):
        batch.step()
    batch.join([preempted])  # prompt + the 7 tokens it made, prefilled again
    run_to_end(batch)

    assert (
        preempted.token_ids
        == alone(base, refs[0], "The quick brown fox", 24, stop_at_eos=False).token_ids
    )
    assert other.token_ids == alone(base, refs[1], "Hello", 24, stop_at_eos=False).token_ids


# ------------------------------------------------------------------------ the lanes
def test_a_generation_request_joins_the_running_batch_at_the_next_step(
    make_engine, generation_adapters
):
    engine = make_engine()
    refs = [a.ref for a in generation_adapters]
    base = engine.registry.base("tiny-causal", TEXT_GENERATION)
    engine.registry.ensure_adapters(base, refs[:2])
    short_alone = alone(base, refs[1], "Hello", 8).text
    long_alone = alone(base, refs[0], "The quick brown fox", 100)
    assert long_alone.completion_tokens == 100
    long_request = generation(refs[0], "The quick brown fox", max_new_tokens=100)

    answers = {}
    worker = threading.Thread(
        target=lambda: answers.update(long=engine.infer(long_request.to_dict(), timeout=120))
    )
    worker.start()
    wait_until(lambda: engine.generation.depth()["running"] == 1)
    steps_before = engine.generation.steps_run

    # When a second buyer calls while the first one's generation runs
    short = result_from_dict(engine.infer(generation(refs[1], "Hello").to_dict(), timeout=120))
    worker.join()
    long = result_from_dict(answers["long"])

    # Then it did not wait for the long one: it shared its forward passes, and both made
    # exactly what they make alone
    assert "long" in answers and engine.generation.steps_run > steps_before
    assert short.batch_size == 2 and long.batch_size == 2
    assert short.outputs.text == short_alone
    assert long.outputs.text == long_alone.text


def test_a_classification_is_answered_while_a_long_generation_runs(
    make_engine, generation_adapters, classification_adapters
):
    engine = make_engine()
    engine.registry.base("minilm-l6", TEXT_CLASSIFICATION, "mean")  # loaded before timing
    generating = engine.generation.submit(
        generation(generation_adapters[0].ref, "The quick brown fox", max_new_tokens=100)
    )
    wait_until(lambda: engine.generation.steps_run >= 2)

    answer = engine.infer(
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TEXT_CLASSIFICATION,
            base_model="minilm-l6",
            adapter=classification_adapters[0].ref,
            inputs=["charged twice"],
        ).to_dict(),
        timeout=60,
    )

    assert "error" not in answer
    assert not generating.done()  # the classification did not wait behind it
    assert generating.result(timeout=120).payload["outputs"]["finish_reason"] in ("length", "stop")


def test_a_cancel_key_set_mid_generation_stops_the_row_within_a_step(
    make_engine, generation_adapters, redis_client
):
    engine = make_engine()
    request = generation(generation_adapters[0].ref, "The quick brown fox", 100, stream=True)
    future = engine.generation.submit(request)
    wait_until(lambda: engine.generation.steps_run >= 3)

    redis_client.set(cancel_key(request.request_id), "1", ex=60)
    answer = result_from_dict(future.result(timeout=60).payload)

    assert answer.outputs.finish_reason == "cancelled"
    assert 0 < answer.usage.completion_tokens < 100
    last = redis_client.xrange(stream_key(request.request_id))[-1][1]
    assert last["type"] == "done" and last["finish_reason"] == "cancelled"
    wait_until(lambda: engine.generation.depth()["running"] == 0)


def test_an_aborted_request_leaves_its_batch(make_engine, generation_adapters):
    engine = make_engine()
    request = generation(generation_adapters[0].ref, "The quick brown fox", 100)
    future = engine.generation.submit(request)
    wait_until(lambda: engine.generation.steps_run >= 2)

    engine.generation.abort(request.request_id)
    engine.generation.abort(request.request_id)  # idempotent

    answer = result_from_dict(future.result(timeout=60).payload)
    assert answer.outputs.finish_reason == "cancelled" and answer.usage.completion_tokens < 100


def test_an_interactive_call_preempts_a_batch_row_which_later_finishes_as_it_would_alone(
    make_engine, generation_adapters
):
    # One row per batch: the batch job's row holds it when the buyer calls
    engine = make_engine(max_size=1)
    refs = [a.ref for a in generation_adapters]
    base = engine.registry.base("tiny-causal", TEXT_GENERATION)
    engine.registry.ensure_adapters(base, refs[:2])
    # (references first: nothing else may run on the lane's base while it decodes)
    interactive_alone = alone(base, refs[1], "Hello", 8).text
    batch_alone = alone(base, refs[0], "The quick brown fox", 100).text
    batch_row = generation(refs[0], "The quick brown fox", 100, priority=PRIORITY_BATCH)
    batch_future = engine.generation.submit(batch_row)
    wait_until(lambda: engine.generation.steps_run >= 3)

    interactive = result_from_dict(engine.infer(generation(refs[1], "Hello").to_dict(), timeout=60))

    assert not batch_future.done()  # the buyer went first
    assert interactive.batch_size == 1
    assert interactive.outputs.text == interactive_alone
    batch_answer = result_from_dict(batch_future.result(timeout=120).payload)
    assert batch_answer.outputs.text == batch_alone


def test_a_full_lane_answers_overloaded_at_once_with_a_retry_hint(
    make_engine, generation_adapters, redis_client
):
    engine = make_engine(max_waiting=2)
    engine.generation.stop()  # nothing drains the queue: it fills
    ref = generation_adapters[0].ref
    for _ in range(2):
        engine.generation.submit(generation(ref, "Hello"))

    request = generation(ref, "Hello", stream=True)
    started = time.monotonic()
    answer = engine.infer(request.to_dict(), timeout=60)

    assert answer["error"]["code"] == "overloaded"
    assert answer["error"]["retry_after"] >= 1
    assert time.monotonic() - started < 5  # at once, not after the 60 s wait
    last = redis_client.xrange(stream_key(request.request_id))[-1][1]
    assert last["type"] == "error" and last["code"] == "overloaded"
    assert float(last["retry_after"]) == answer["error"]["retry_after"]  # a stream says when too
    # Batch rows have a bound of their own: a full interactive queue does not refuse them
    engine.generation.submit(generation(ref, "Hello", priority=PRIORITY_BATCH))
    assert engine.queue_depth()["generation"] == {
        "waiting": {"interactive": 2, "batch": 1},
        "running": 0,
        "max_waiting": 2,
    }
    assert engine.queue_depth()["classification"]["waiting"] == {"interactive": 0, "batch": 0}


def test_a_prompt_longer_than_its_base_allows_is_input_too_long(make_engine):
    engine = make_engine(max_prompt_tokens={"tiny-causal": 6})
    answer = engine.infer(generation(None, LONG_PROMPT).to_dict(), timeout=60)
    assert answer["error"]["code"] == "input_too_long"
    assert "tiny-causal takes at most 6" in answer["error"]["message"]

    # Not named: its context (128) less the new tokens a call may ask for, at least half
    default = make_engine(reserved_new_tokens=100)
    base = default.registry.base("tiny-causal", TEXT_GENERATION)
    context = context_limit(base)
    assert default.prompt_token_limit(base) == context - 100
    assert make_engine(reserved_new_tokens=10_000).prompt_token_limit(base) == context // 2
    assert "error" not in default.infer(generation(None, "Hello").to_dict(), timeout=60)


def test_an_unknown_priority_is_an_invalid_request(make_engine):
    engine = make_engine()
    raw = generation(None, "Hello").to_dict() | {"priority": "urgent"}
    assert engine.infer(raw, timeout=10)["error"]["code"] == "invalid_request"


# ------------------------------------------------------------------------- registry
def test_an_adapter_a_running_batch_uses_is_never_evicted_by_the_other_lane(
    base_sources, generation_adapters, classification_adapters
):
    registry = new_registry(base_sources, cache_bytes=1)  # every load evicts what it can
    generating = registry.base("tiny-causal", TEXT_GENERATION)
    registry.ensure_adapters(generating, [generation_adapters[0].ref])
    name = next(iter(generating.adapters))
    registry.pin(generating, [name])

    classifying = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    registry.ensure_adapters(classifying, [classification_adapters[0].ref])
    assert name in generating.adapters  # pinned: kept, over budget

    registry.unpin(generating, [name])
    registry.ensure_adapters(classifying, [classification_adapters[1].ref])
    assert name not in generating.adapters


def test_gathered_rows_selected_and_concatenated_equal_a_fresh_gather(loaded):
    from serving.engine.lora_batched import gather
    from serving.engine.registry import adapter_name_for

    base, refs = loaded
    names = [adapter_name_for(ref.sha256) for ref in refs]  # ranks 4, 8 and 12
    # A batch's stacks kept in step with its rows: three rows, one joins, two leave
    kept = gather(base.model, [names[0], None, names[2]]).concat(gather(base.model, [names[1]]))
    kept = kept.select(torch.tensor([3, 0, 1]))
    fresh = gather(base.model, [names[1], names[0], None])

    generator = torch.Generator().manual_seed(0)
    for (a_kept, b_kept), (a_fresh, b_fresh) in zip(kept.stacks, fresh.stacks, strict=True):
        x = torch.randn(3, 4, a_kept.shape[1], generator=generator)
        torch.testing.assert_close(x @ a_kept @ b_kept, x @ a_fresh @ b_fresh)
    assert kept.layers == fresh.layers


def test_a_redis_outage_answers_generation_calls_instead_of_hanging(
    base_sources, generation_adapters
):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    engine = Engine(
        registry=new_registry(base_sources),
        redis=redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)),
        max_size=4,
        max_wait_ms=1,
    )
    try:
        request = generation(generation_adapters[0].ref, "Hello", stream=True)
        answer = result_from_dict(engine.infer(request.to_dict(), timeout=60))
    finally:
        engine.stop()
    assert answer.outputs.finish_reason == "length" and answer.usage.completion_tokens == 8


def test_lanes_running_together_share_the_cpu_threads():
    from serving.engine.batching import ThreadShare

    before = torch.get_num_threads()
    share = ThreadShare(total=4)
    try:
        with share.running("classification"):
            assert torch.get_num_threads() == 4  # alone: every thread
            with share.running("generation"):
                assert torch.get_num_threads() == 2  # together: half each
            assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
