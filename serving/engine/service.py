"""The engine of an inference worker process: registry + batcher + Redis streaming.

``engine_infer(request=...)`` is what ``serving.tasks.infer`` calls in each pool thread:
it parses the protocol request, waits for its batch and returns the protocol answer
(``InferenceResult`` or ``InferenceError`` as a dict). Never raises for a bad request or
a bad adapter: those are answers with an error code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from serving.engine.batching import Batcher, Pending
from serving.engine.registry import EngineError, LoadedBase, ModelRegistry, adapter_name_for
from serving.engine.runner import (
    ClassificationRow,
    GenerationRow,
    classify_rows,
    count_tokens,
    encode_prompt,
    generate_rows,
    render_chat,
    render_prompt,
    token_limit,
)
from serving.protocol import (
    STREAM_TTL_SECONDS,
    TEXT_CLASSIFICATION,
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
    """What a batch resolves each future with."""

    payload: dict
    finished_at: float


class Engine:
    def __init__(self, *, registry: ModelRegistry, redis, max_size: int, max_wait_ms: float):
        self.registry = registry
        self.redis = redis
        self.max_size = max_size
        self.batcher = Batcher(self.run_batch, max_size=max_size, max_wait_ms=max_wait_ms)

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
        rows = len(request.inputs) if request.task == TEXT_CLASSIFICATION else 1
        future = self.batcher.submit(request, rows=max(rows, 1))
        if timeout is None:  # Celery enforces no time limit on a threads pool: we do
            remaining = request.deadline - time.time() if request.deadline else None
            timeout = max(remaining, 0) + 5 if remaining is not None else UNBOUNDED_WAIT_SECONDS
        try:
            answer: Answer = future.result(timeout=timeout)
        except FutureTimeout:
            return self._fail(request, ErrorCode.ENGINE_ERROR, "The engine did not answer in time.")
        except Exception as exc:  # the batch itself crashed; logged by the batcher
            return self._fail(request, ErrorCode.ENGINE_ERROR, f"Engine error: {exc}")
        payload = dict(answer.payload)
        if "error" not in payload:
            payload["engine_ms"] = round((answer.finished_at - started) * 1000, 3)
        return payload

    def _fail(self, request: InferenceRequest, code: str, message: str) -> dict:
        if request.stream:
            self._xadd(request.request_id, stream_event_error(code, message))
        return InferenceError(request.request_id, code, message).to_dict()

    def _xadd(self, request_id: str, event: dict) -> None:
        if self.redis is None:
            return
        key = stream_key(request_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, event)
        pipe.expire(key, STREAM_TTL_SECONDS)
        pipe.execute()

    # ------------------------------------------------------------ the batch
    def run_batch(self, batch: list[Pending]) -> None:
        groups: dict[tuple[str, str, str], list[Pending]] = defaultdict(list)
        for pending in batch:
            request = pending.request
            if request.deadline is not None and time.time() > request.deadline:
                self._resolve_error(pending, ErrorCode.DEADLINE_EXCEEDED, "Deadline passed.")
                continue
            head = ""  # a classification adapter names the head it was trained on
            if request.task == TEXT_CLASSIFICATION and request.adapter is not None:
                try:
                    head = self.registry.adapter_head(request.adapter)
                except EngineError as exc:
                    self._resolve_error(pending, exc.code, str(exc))
                    continue
            groups[(request.base_model, request.task, head)].append(pending)
        for (slug, task, head), group in groups.items():
            try:
                base = self.registry.base(slug, task, head)
            except EngineError as exc:
                for pending in group:
                    self._resolve_error(pending, exc.code, str(exc))
                continue
            ready = self._load_adapters(base, group)
            if not ready:
                continue
            try:
                if task == TEXT_CLASSIFICATION:
                    self._classify(base, ready)
                else:
                    self._generate(base, ready)
            except EngineError as exc:
                for pending in ready:
                    self._resolve_error(pending, exc.code, str(exc))
            except Exception as exc:
                logger.exception("serving: %s batch on %s failed", task, slug)
                for pending in ready:
                    self._resolve_error(pending, ErrorCode.ENGINE_ERROR, f"Engine error: {exc}")

    def _load_adapters(self, base: LoadedBase, group: list[Pending]) -> list[Pending]:
        """Load each request's adapter on its own, so one bad adapter fails one request."""
        ready, pinned = [], set()
        for pending in group:
            ref = pending.request.adapter
            if ref is None:
                if base.task == TEXT_CLASSIFICATION:
                    self._resolve_error(
                        pending, ErrorCode.INVALID_REQUEST, "Classification needs an adapter."
                    )
                    continue
                ready.append(pending)
                continue
            try:
                self.registry.ensure_adapters(base, [ref], pinned=pinned)
            except EngineError as exc:
                self._resolve_error(pending, exc.code, str(exc))
                continue
            pinned.add(adapter_name_for(ref.sha256))
            ready.append(pending)
        return ready

    def _resolve(self, pending: Pending, payload: dict) -> None:
        if not pending.future.done():
            pending.future.set_result(Answer(payload=payload, finished_at=time.monotonic()))

    def _resolve_error(self, pending: Pending, code: str, message: str) -> None:
        request = pending.request
        if request.stream:
            self._xadd(request.request_id, stream_event_error(code, message))
        self._resolve(pending, InferenceError(request.request_id, code, message).to_dict())

    def _classify(self, base: LoadedBase, ready: list[Pending]) -> None:
        rows = [
            (index, ClassificationRow(text=text, adapter=pending.request.adapter))
            for index, pending in enumerate(ready)
            for text in pending.request.inputs
        ]
        scores: list[dict[str, float]] = []
        for start in range(0, len(rows), self.max_size):
            chunk = [row for _, row in rows[start : start + self.max_size]]
            scores.extend(classify_rows(base, chunk))
        per_request: dict[int, list[ClassificationOutput]] = defaultdict(list)
        for (index, _), row_scores in zip(rows, scores, strict=True):
            label = max(row_scores, key=row_scores.__getitem__)
            per_request[index].append(ClassificationOutput(label=label, scores=row_scores))
        for index, pending in enumerate(ready):
            request = pending.request
            prompt_tokens = sum(count_tokens(base, request.inputs, token_limit(request.adapter)))
            result = InferenceResult(
                request_id=request.request_id,
                outputs=per_request[index],
                usage=Usage(prompt_tokens, 0, prompt_tokens),
                adapter_sha256=request.adapter.sha256,
                batch_size=min(len(rows), self.max_size),
                engine_ms=0.0,
            )
            self._resolve(pending, result.to_dict())

    def _generate(self, base: LoadedBase, ready: list[Pending]) -> None:
        runnable: list[Pending] = []
        rows: list[GenerationRow] = []
        limit = int(getattr(base.model.config, "max_position_embeddings", 2048) or 2048)
        for pending in ready:
            request = pending.request
            if request.messages:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                prompt = render_chat(base, messages)
            else:  # a row's prompt, formatted as training formatted it
                prompt = render_prompt(base, request.prompt or "")
            prompt_tokens = len(encode_prompt(base, prompt))
            if prompt_tokens + request.parameters.max_new_tokens > limit:
                self._resolve_error(
                    pending,
                    ErrorCode.INPUT_TOO_LONG,
                    f"The prompt has {prompt_tokens} tokens; with max_new_tokens "
                    f"{request.parameters.max_new_tokens} it exceeds the model's {limit}.",
                )
                continue
            on_text = None
            if request.stream:
                request_id = request.request_id
                on_text = lambda text, rid=request_id: self._xadd(rid, stream_event_token(text))  # noqa: E731
            runnable.append(pending)
            rows.append(GenerationRow(prompt, request.adapter, request.parameters, on_text))
        if not runnable:
            return
        results = generate_rows(base, rows, cancelled=self._cancelled_checker(runnable))
        for pending, result in zip(runnable, results, strict=True):
            request = pending.request
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
                batch_size=len(runnable),
                engine_ms=0.0,
            )
            self._resolve(pending, answer.to_dict())

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
                values = self.redis.mget([keys[i] for i in live])
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
    )


def engine_infer(*, request: dict) -> dict:
    """Answer one protocol request through this process's batcher (blocks until done)."""
    return engine_get().infer(request)
