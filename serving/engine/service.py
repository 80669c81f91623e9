"""The engine of an inference worker process: registry + two lanes + Redis streaming.

``Engine.infer(request_dict)`` is what the worker calls in each of its pool threads: it
parses the protocol request, submits it to its task's lane (``batching.py``: a
classification lane of micro-batches and a generation lane of iteration-level batching,
each with its own thread, queue and scheduler), waits for the answer and returns the
protocol answer (``InferenceResult`` or ``InferenceError`` as a dict). Never raises for a
bad request or a bad adapter: those are answers with an error code. A full lane answers
``overloaded`` at once, with ``retry_after``; ``queue_depth()`` says what each lane holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from serving.engine.batching import (
    ClassificationLane,
    GenerationLane,
    Overloaded,
    Pending,
    ThreadShare,
)
from serving.engine.registry import EngineError, LoadedBase, ModelRegistry, adapter_name_for
from serving.engine.runner import (
    ClassificationRow,
    GenerationRow,
    RowState,
    classify,
    context_limit,
    encode_prompt,
    render_chat,
    render_prompt,
    zero_shot,
)
from serving.protocol import (
    STREAM_MAX_ENTRIES,
    STREAM_TTL_SECONDS,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    ClassificationOutput,
    ErrorCode,
    GenerationOutput,
    InferenceError,
    InferenceRequest,
    InferenceResult,
    Usage,
    cancel_key,
    stream_event_done,
    stream_event_error,
    stream_event_token,
    stream_key,
)

logger = logging.getLogger(__name__)

UNBOUNDED_WAIT_SECONDS = 300  # a request without a deadline still gives up


@dataclass
class Answer:
    """What a lane resolves each future with."""

    payload: dict
    finished_at: float


class Engine:
    """One per worker process. ``max_size``: rows per classification batch and per
    generation decode batch; ``max_waiting``: requests each lane queues per priority before
    it answers ``overloaded``; ``max_prefill_tokens``: prompt tokens the generation lane
    prefills per step beyond its first admission (a long prefill stalls the running rows);
    ``max_prompt_tokens``: a prompt limit per base slug (default ``default_prompt_limit``)."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        redis,
        max_size: int,
        max_wait_ms: float,
        max_waiting: int = 256,
        max_prefill_tokens: int = 512,
        max_prompt_tokens: Mapping[str, int] | None = None,
        reserved_new_tokens: int = 256,
    ):
        self.registry = registry
        self.redis = redis
        self.max_size = max_size
        self.max_prompt_tokens = dict(max_prompt_tokens or {})
        self.reserved_new_tokens = reserved_new_tokens
        self._streamed: list[tuple[str, dict]] = []  # the generation lane's, until flushed
        threads = ThreadShare()  # torch's threads, shared by the lanes running forwards
        self.classification = ClassificationLane(
            self._run_classification,
            fail=self._resolve_error,
            max_size=max_size,
            max_wait_ms=max_wait_ms,
            max_waiting=max_waiting,
            threads=threads,
        )
        self.generation = GenerationLane(
            self,
            fail=self._resolve_error,
            max_running=max_size,
            max_prefill_tokens=max_prefill_tokens,
            max_waiting=max_waiting,
            threads=threads,
        )

    # --------------------------------------------------------------- callers
    def infer(self, raw: dict, timeout: float | None = None) -> dict:
        started = time.monotonic()
        try:
            request = InferenceRequest.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            return InferenceError(
                str(raw.get("request_id", "")), ErrorCode.INVALID_REQUEST, f"Bad request: {exc}"
            ).to_dict()
        if request.deadline is not None and time.time() > request.deadline:
            return self._fail(request, ErrorCode.DEADLINE_EXCEEDED, "Picked up after its deadline.")
        if request.task == TEXT_CLASSIFICATION:
            lane, rows = self.classification, max(len(request.inputs), 1)
        else:
            lane, rows = self.generation, 1
        try:
            future = lane.submit(request, rows=rows)
        except Overloaded as exc:
            return self._fail(request, ErrorCode.OVERLOADED, str(exc), exc.retry_after)
        if timeout is None:  # the worker's pool enforces no time limit: we do
            remaining = request.deadline - time.time() if request.deadline else None
            timeout = max(remaining, 0) + 5 if remaining is not None else UNBOUNDED_WAIT_SECONDS
        try:
            answer: Answer = future.result(timeout=timeout)
        except FutureTimeout:
            lane.abort(request.request_id)  # nobody waits for it any more: free its row
            return self._fail(request, ErrorCode.ENGINE_ERROR, "The engine did not answer in time.")
        except Exception as exc:  # the batch itself crashed; logged by the lane
            return self._fail(request, ErrorCode.ENGINE_ERROR, f"Engine error: {exc}")
        payload = dict(answer.payload)
        if "error" not in payload:
            payload["engine_ms"] = round((answer.finished_at - started) * 1000, 3)
        return payload

    def queue_depth(self) -> dict[str, dict[str, Any]]:
        """Per lane: requests waiting per priority, rows running, the waiting bound."""
        return {
            "classification": self.classification.depth(),
            "generation": self.generation.depth(),
        }

    def prompt_token_limit(self, base: LoadedBase) -> int:
        """The longest prompt, in tokens, ``base`` takes: its setting, else its context
        less the new tokens a call may ask for (at least half its context)."""
        if base.slug in self.max_prompt_tokens:
            return self.max_prompt_tokens[base.slug]
        context = context_limit(base)
        return max(context - self.reserved_new_tokens, context // 2)

    def stop(self) -> None:
        self.classification.stop()
        self.generation.stop()

    def _fail(
        self, request: InferenceRequest, code: str, message: str, retry_after: float | None = None
    ) -> dict:
        if request.stream:
            self._xadd(request.request_id, stream_event_error(code, message, retry_after))
        return InferenceError(request.request_id, code, message, retry_after).to_dict()

    def _xadd(self, request_id: str, event: dict) -> None:
        self._write_streams([(request_id, event)])

    def _write_streams(self, events: Sequence[tuple[str, dict]]) -> None:
        """XADD ``events`` in order, in one round trip. Redis down: logged, not raised (the
        request is still answered; nobody can read its stream anyway)."""
        if self.redis is None or not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for request_id, event in events:
            pipe.xadd(stream_key(request_id), event, maxlen=STREAM_MAX_ENTRIES, approximate=False)
        for request_id in dict.fromkeys(request_id for request_id, _ in events):
            pipe.expire(stream_key(request_id), STREAM_TTL_SECONDS)
        try:
            pipe.execute()
        except RedisError as exc:
            logger.warning("serving: %d stream events lost: %s", len(events), exc)

    def flush_streams(self) -> None:
        """Write the tokens the generation lane's last step streamed (one round trip per
        step, not per token). Called by the lane's thread, before any request it answers."""
        events, self._streamed = self._streamed, []
        self._write_streams(events)

    def _resolve(self, pending: Pending, payload: dict) -> None:
        if not pending.future.done():
            pending.future.set_result(Answer(payload=payload, finished_at=time.monotonic()))

    def _resolve_error(self, pending: Pending, code: str, message: str) -> None:
        request = pending.request
        if request.stream:
            self._xadd(request.request_id, stream_event_error(code, message))
        self._resolve(pending, InferenceError(request.request_id, code, message).to_dict())

    # ------------------------------------------------------- classification
    def _run_classification(self, batch: list[Pending]) -> None:
        """One classification batch (the lane's): grouped by (base, head), each group one
        forward pass with its adapters loaded and pinned."""
        groups: dict[tuple[str, str], list[Pending]] = defaultdict(list)
        zero_shot: list[Pending] = []  # the router's generalist fallback (no adapter)
        for pending in batch:
            request = pending.request
            if request.deadline is not None and time.time() > request.deadline:
                self._resolve_error(pending, ErrorCode.DEADLINE_EXCEEDED, "Deadline passed.")
                continue
            if request.adapter is None:
                if len(request.labels) < 2:
                    self._resolve_error(
                        pending,
                        ErrorCode.INVALID_REQUEST,
                        "Classification needs an adapter, or two or more labels for zero-shot.",
                    )
                else:
                    zero_shot.append(pending)
                continue
            try:  # a classification adapter names the head it was trained on
                head = self.registry.adapter_head(request.adapter)
            except EngineError as exc:
                self._resolve_error(pending, exc.code, str(exc))
                continue
            groups[(request.base_model, head)].append(pending)
        for pending in zero_shot:
            self._zero_shot(pending)
        for (slug, head), group in groups.items():
            try:
                base = self.registry.base(slug, TEXT_CLASSIFICATION, head)
            except EngineError as exc:
                for pending in group:
                    self._resolve_error(pending, exc.code, str(exc))
                continue
            ready = self._load_adapters(base, group)
            if not ready:
                continue
            names = [adapter_name_for(p.request.adapter.sha256) for p in ready]
            self.registry.pin(base, names)
            try:
                self._classify(base, ready)
            except EngineError as exc:
                for pending in ready:
                    self._resolve_error(pending, exc.code, str(exc))
            except Exception as exc:
                logger.exception("serving: classification batch on %s failed", slug)
                for pending in ready:
                    self._resolve_error(pending, ErrorCode.ENGINE_ERROR, f"Engine error: {exc}")
            finally:
                self.registry.unpin(base, names)

    def _zero_shot(self, pending: Pending) -> None:
        """One request answered by the un-adapted base, zero-shot over its labels."""
        request = pending.request
        try:
            base = self.registry.base(request.base_model, TEXT_CLASSIFICATION, "mean")
            classified = zero_shot(base, request.inputs, request.labels)
        except EngineError as exc:
            self._resolve_error(pending, exc.code, str(exc))
            return
        except Exception as exc:
            logger.exception("serving: zero-shot on %s failed", request.base_model)
            self._resolve_error(pending, ErrorCode.ENGINE_ERROR, f"Engine error: {exc}")
            return
        used = sum(classified.tokens)
        outputs = [
            ClassificationOutput(label=max(scores, key=scores.__getitem__), scores=scores)
            for scores in classified.scores
        ]
        result = InferenceResult(
            request_id=request.request_id,
            outputs=outputs,
            usage=Usage(used, 0, used),
            adapter_sha256=None,
            batch_size=len(request.inputs),
            engine_ms=0.0,
        )
        self._resolve(pending, result.to_dict())

    def _load_adapters(self, base: LoadedBase, group: list[Pending]) -> list[Pending]:
        """Load each distinct adapter on its own (once per batch, however many requests
        name it), so one bad adapter fails only the requests that name it."""

        def key(ref):
            return ref.sha256, ref.config_sha256

        failed: dict[tuple[str, str], EngineError] = {}
        pinned: set[str] = set()
        for ref in {key(p.request.adapter): p.request.adapter for p in group}.values():
            try:
                self.registry.ensure_adapters(base, [ref], pinned=pinned)
            except EngineError as exc:
                failed[key(ref)] = exc
                continue
            pinned.add(adapter_name_for(ref.sha256))
        ready = []
        for pending in group:
            exc = failed.get(key(pending.request.adapter))
            if exc is not None:
                self._resolve_error(pending, exc.code, str(exc))
            else:
                ready.append(pending)
        return ready

    def _classify(self, base: LoadedBase, ready: list[Pending]) -> None:
        rows = [
            (index, ClassificationRow(text=text, adapter=pending.request.adapter))
            for index, pending in enumerate(ready)
            for text in pending.request.inputs
        ]
        scores: list[dict[str, float]] = []
        tokens: list[int] = []
        for start in range(0, len(rows), self.max_size):
            classified = classify(base, [row for _, row in rows[start : start + self.max_size]])
            scores.extend(classified.scores)
            tokens.extend(classified.tokens)
        per_request: dict[int, list[ClassificationOutput]] = defaultdict(list)
        prompt_tokens: dict[int, int] = defaultdict(int)
        for (index, _), row_scores, row_tokens in zip(rows, scores, tokens, strict=True):
            label = max(row_scores, key=row_scores.__getitem__)
            per_request[index].append(ClassificationOutput(label=label, scores=row_scores))
            prompt_tokens[index] += row_tokens
        for index, pending in enumerate(ready):
            request = pending.request
            used = prompt_tokens[index]
            result = InferenceResult(
                request_id=request.request_id,
                outputs=per_request[index],
                usage=Usage(used, 0, used),
                adapter_sha256=request.adapter.sha256,
                batch_size=min(len(rows), self.max_size),
                engine_ms=0.0,
            )
            self._resolve(pending, result.to_dict())

    # ----------------------------------------------------------- generation
    def prepare_generation(
        self, request: InferenceRequest
    ) -> tuple[LoadedBase, GenerationRow, list[int]]:
        """The generation lane's first look at a request (on its thread): the base, the
        prompt rendered as training rendered it, its tokens, checked against the base's
        prompt limit and context. Raises ``EngineError`` (``input_too_long``, ...)."""
        base = self.registry.base(request.base_model, TEXT_GENERATION)
        if request.messages:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            prompt = render_chat(base, messages)
        else:  # a row's prompt, formatted as training formatted it
            prompt = render_prompt(base, request.prompt or "")
        prompt_ids = encode_prompt(base, prompt)
        limit = self.prompt_token_limit(base)
        if len(prompt_ids) > limit:
            raise EngineError(
                f"The prompt has {len(prompt_ids)} tokens; {base.slug} takes at most {limit}.",
                ErrorCode.INPUT_TOO_LONG,
            )
        context = context_limit(base)
        max_new_tokens = request.parameters.max_new_tokens
        if len(prompt_ids) + max_new_tokens > context:
            raise EngineError(
                f"The prompt has {len(prompt_ids)} tokens; with max_new_tokens "
                f"{max_new_tokens} it exceeds the model's {context}.",
                ErrorCode.INPUT_TOO_LONG,
            )
        on_text = None
        if request.stream:
            request_id = request.request_id
            on_text = lambda text, rid=request_id: self._streamed.append(  # noqa: E731
                (rid, stream_event_token(text))
            )
        return base, GenerationRow(prompt, request.adapter, request.parameters, on_text), prompt_ids

    def finish_generation(self, pending: Pending, state: RowState) -> None:
        """A row left the batch (finished, stopped or cancelled): answer its request."""
        request = pending.request
        result = state.result()
        usage = Usage(
            result.prompt_tokens,
            result.completion_tokens,
            result.prompt_tokens + result.completion_tokens,
        )
        if request.stream:
            self._xadd(request.request_id, stream_event_done(result.finish_reason, usage))
        answer = InferenceResult(
            request_id=request.request_id,
            outputs=GenerationOutput(text=result.text, finish_reason=result.finish_reason),
            usage=usage,
            adapter_sha256=request.adapter.sha256 if request.adapter else None,
            batch_size=state.peak_rows,
            engine_ms=0.0,
        )
        self._resolve(pending, answer.to_dict())

    def cancelled(self, pendings: Sequence[Pending]) -> set[int]:
        return self._cancelled_checker(pendings)(range(len(pendings)))

    def _cancelled_checker(self, runnable: Sequence[Pending]):
        """Rows to stop before the next decoding step: their client went away (the
        gateway set the cancel key, on any end of the call) or their deadline passed
        (nobody waits for them any more)."""
        keys = [cancel_key(p.request.request_id) for p in runnable]
        deadlines = [p.request.deadline for p in runnable]

        def cancelled(live: Sequence[int]) -> set[int]:
            now = time.time()
            gone = {i for i in live if deadlines[i] is not None and now > deadlines[i]}
            if self.redis is not None:
                try:
                    values = self.redis.mget([keys[i] for i in live])
                except RedisError as exc:  # deadlines still apply
                    logger.warning("serving: cancel keys unreadable: %s", exc)
                    return gone
                gone |= {i for i, value in zip(live, values, strict=True) if value is not None}
            return gone

        return cancelled


_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine_get() -> Engine:
    """This process's engine, built on first use from Django settings."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _engine_from_settings()
        return _engine


def _engine_from_settings() -> Engine:
    import redis
    from django.conf import settings
    from django.db import close_old_connections

    from training_worker.artifacts import read_bytes
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.models import BaseModel

    def resolve_base(slug: str) -> str:
        try:
            source = BaseModel.objects.get(slug=slug, enabled=True).source
        except BaseModel.DoesNotExist as exc:
            raise EngineError(
                f"No enabled base model {slug!r}.", ErrorCode.BASE_UNAVAILABLE
            ) from exc
        finally:
            close_old_connections()
        return resolve_base_model_source(source, settings.MODEL_CACHE_DIR)

    registry = ModelRegistry(
        resolve_base=resolve_base,
        read_bytes=read_bytes,
        cache_bytes=settings.SERVING_ADAPTER_CACHE_BYTES,
    )
    return Engine(
        registry=registry,
        redis=redis.Redis.from_url(settings.REDIS_URL),
        max_size=settings.SERVING_BATCH_MAX_SIZE,
        max_wait_ms=settings.SERVING_BATCH_MAX_WAIT_MS,
        max_waiting=settings.SERVING_QUEUE_MAX_WAITING,
        max_prefill_tokens=settings.SERVING_PREFILL_MAX_TOKENS,
        max_prompt_tokens=settings.SERVING_MAX_PROMPT_TOKENS,
        reserved_new_tokens=settings.SERVING_MAX_NEW_TOKENS,
    )


def engine_infer(*, request: dict) -> dict:
    """Answer one protocol request through this process's engine (blocks until done)."""
    return engine_get().infer(request)
