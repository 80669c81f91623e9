"""The gateway on the event loop: predict and /v1 under ASGI, each call a coroutine.

The same path as serving.gateway, in the same order, with the same refusals and the same
ledger (that module's docstring is the contract): only the waiting changed. Waiting on
Redis (the engine's answer, a token stream) is a coroutine, so an open stream holds no
thread; the database work that must stay synchronous (the ledger row, its settlement, a
licence read the cache could not answer) runs in Django's thread pool. What a key and a
licence allow comes from serving.access_cache (exact through access epochs), so a call
costs the database one transaction to write its ledger row and one statement to settle it.

Also here: concurrency limits per API key and per listing (SERVING_MAX_CONCURRENT_PER_KEY,
SERVING_MAX_CONCURRENT_PER_LISTING; 429 too_many_concurrent_calls with Retry-After), so
one buyer's burst cannot take every slot of a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import User
from billing.models import UsageStatus
from billing.selectors import licence_for_call
from marketplace.metrics import (
    observe_inference,
    observe_routing,
    observe_stream_done,
    observe_stream_first_token,
)
from serving import access_cache, dispatch, garden_calls, gateway, protocol, router
from serving.errors import EngineUnavailable, InvalidInferenceInput
from serving.gateway import (
    LIVENESS_CHECK_EVERY_SECONDS,
    GatewayAnswer,
    ModelRef,
    StreamEvent,
    Target,
    _event,
    _served_version,
    answer_of,
)
from serving.protocol import InferenceRequest
from serving.ratelimit import (
    InFlight,
    RateWindow,
    aadmit,
    ainflight_release,
    serving_aredis,
)


@dataclass(frozen=True)
class Caller:
    """Who calls: a user, through an API key (key_id) or a signed-in session (None)."""

    user_id: int
    key_id: uuid.UUID | None = None
    key_rate_limit: int | None = None
    epochs: tuple[int, int] | None = None

    @property
    def user(self) -> User:
        return User(pk=self.user_id)  # what the selectors need of it: its id


# --- the steps ------------------------------------------------------------------------------


async def target_resolve(caller: Caller, model: ModelRef) -> Target:
    """The licence check from the cache while the caller's epochs hold, else the database
    (one statement; 404 listing/version, 403 licence), then the version's adapter."""
    check = await licence_check(caller, model)
    task, base_model, adapter = await _version(check.model_version_id)
    return Target(check=check, task=task, base_model=base_model, adapter=adapter)


async def licence_check(caller: Caller, model: ModelRef):
    check = access_cache.licence_check_cached(
        caller.user_id, model.listing_slug, model.version_number, caller.epochs
    )
    if check is None:
        check = await sync_to_async(licence_for_call)(
            user=caller.user, listing_slug=model.listing_slug, version_number=model.version_number
        )
        access_cache.licence_check_store(
            caller.user_id, model.listing_slug, model.version_number, caller.epochs, check
        )
    return check


_versions: dict = {}


async def _version(model_version_id):
    """A version's task, base and adapter: read once per process (a ModelVersion never
    changes once written)."""
    found = _versions.get(model_version_id)
    if found is None:
        found = await sync_to_async(_served_version)(model_version_id)
        if len(_versions) > access_cache.MAX_ENTRIES:
            _versions.clear()
        _versions[model_version_id] = found
    return found


def _windows(caller: Caller) -> list[RateWindow]:
    windows = [
        RateWindow(subject=f"user:{caller.user_id}", limit=settings.SERVING_RATE_LIMIT_PER_MINUTE)
    ]
    if caller.key_id is not None and caller.key_rate_limit is not None:
        windows.append(RateWindow(subject=f"key:{caller.key_id}", limit=caller.key_rate_limit))
    return windows


def _slots(caller: Caller, target: Target) -> list[InFlight]:
    holder = f"key:{caller.key_id}" if caller.key_id else f"user:{caller.user_id}"
    return [
        InFlight(subject=holder, limit=settings.SERVING_MAX_CONCURRENT_PER_KEY),
        InFlight(
            subject=f"listing:{target.check.listing_slug}",
            limit=settings.SERVING_MAX_CONCURRENT_PER_LISTING,
        ),
    ]


async def _admit(caller: Caller, target: Target, units: int) -> list[InFlight]:
    """Quota (429 quota_exceeded / spend_cap_reached), the rate limit (429), then a slot
    under the concurrency limits (429 too_many_concurrent_calls). Returns the slots to
    release when the call ends."""
    target.check.require_calls(units)
    slots = _slots(caller, target)
    await aadmit(
        windows=_windows(caller), slots=slots, ttl=settings.SERVING_TIMEOUT_SECONDS * 2 + 30
    )
    return slots


def _record_sync(target: Target, key_id, request_id: str, units: int) -> None:
    gateway._record(target=target, api_key=_KeyRef(key_id) if key_id else None,
                    request_id=request_id, units=units)  # fmt: skip


@dataclass(frozen=True)
class _KeyRef:
    """What gateway._record reads of an API key: its id."""

    pk: Any


async def _record(target: Target, caller: Caller, request_id: str, units: int) -> None:
    if not target.metered:
        return  # the owner's own calls are not billed
    await sync_to_async(_record_sync)(target, caller.key_id, request_id, units)


async def _settle(target: Target, request_id: str, status: str, started: float) -> int:
    latency_ms = int((time.monotonic() - started) * 1000)
    if target.metered:
        await sync_to_async(gateway._settle)(target, request_id, status, started)
    return latency_ms


async def cancel_request(request_id: str) -> None:
    # Unreachable Redis: the worker's deadline and max_new_tokens still bound it.
    with contextlib.suppress(redis.RedisError):
        await serving_aredis().set(
            protocol.cancel_key(request_id), "1", ex=protocol.CANCEL_TTL_SECONDS
        )


_workers_seen_at = float("-inf")


async def _workers_alive() -> bool:
    global _workers_seen_at
    if time.monotonic() - _workers_seen_at < gateway.LIVENESS_TRUST_SECONDS:
        return True
    try:
        alive = bool(
            await serving_aredis().zcount(
                dispatch.WORKERS, time.time() - dispatch.ALIVE_SECONDS, "+inf"
            )
        )
    except redis.RedisError as exc:
        raise EngineUnavailable("The inference queue is unreachable.") from exc
    if alive:
        _workers_seen_at = time.monotonic()
    return alive


_groups_made: set[int] = set()


async def _send(request: InferenceRequest) -> None:
    client = serving_aredis()
    try:
        if id(client) not in _groups_made:
            try:
                await client.xgroup_create(dispatch.REQUESTS, dispatch.GROUP, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            _groups_made.add(id(client))
        await client.xadd(
            dispatch.REQUESTS,
            {"r": json.dumps(request.to_dict())},
            maxlen=dispatch.REQUESTS_MAXLEN,
            approximate=True,
        )
    except redis.RedisError as exc:
        raise EngineUnavailable("The inference queue is unreachable; try again shortly.") from exc


async def _engine_call(request: InferenceRequest, deadline: float):
    await _send(request)
    client = serving_aredis()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise gateway._timeout_error()
        try:
            reply = await client.blpop(
                [dispatch.answer_key(request.request_id)],
                timeout=max(0.01, min(left, LIVENESS_CHECK_EVERY_SECONDS)),
            )
        except redis.RedisError as exc:
            raise EngineUnavailable("The inference queue is unreachable.") from exc
        if reply is not None:
            return answer_of(json.loads(reply[1]))
        if time.monotonic() < deadline and not await _workers_alive():
            raise gateway._no_worker_error()


def _new_request(target: Target, request_id: str, **fields) -> InferenceRequest:
    return gateway._new_request(target, request_id, **fields)


async def _run(caller: Caller, target: Target, request: InferenceRequest, units: int):
    started = time.monotonic()
    deadline = started + settings.SERVING_TIMEOUT_SECONDS
    slots = await _admit(caller, target, units)
    try:
        await _record(target, caller, request.request_id, units)
        try:
            result = await _engine_call(request, deadline)
            gateway.adapter_integrity(target, result)
        except BaseException:
            await cancel_request(request.request_id)
            await _settle(target, request.request_id, UsageStatus.ERROR, started)
            raise
        latency_ms = await _settle(target, request.request_id, UsageStatus.OK, started)
    finally:
        await ainflight_release(slots)
    observe_inference(
        task=target.task,
        latency_s=time.monotonic() - started,
        engine_s=result.engine_ms / 1000,
        batch_size=result.batch_size,
        listing=target.metrics_listing,
    )
    return GatewayAnswer(
        request_id=request.request_id, target=target, result=result, latency_ms=latency_ms
    )


# --- the calls ------------------------------------------------------------------------------


async def predict(*, caller: Caller, listing_ref: str, payload: Any) -> GatewayAnswer:
    """gateway.predict, on the event loop."""
    request_id = str(uuid.uuid4())
    model = ModelRef.parse(listing_ref, field_name="listing")
    check = await licence_check(caller, model)
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInferenceInput(
            'The body needs an "inputs" member.', fields={"inputs": ["Required."]}
        )
    if check.garden:
        return await garden_predict(caller, check, payload)
    task, base_model, adapter = await _version(check.model_version_id)
    target = Target(check=check, task=task, base_model=base_model, adapter=adapter)
    if target.task == protocol.TEXT_CLASSIFICATION:
        inputs = gateway.classification_inputs(payload["inputs"])
        request = _new_request(target, request_id, inputs=inputs)
        units = len(inputs)
    else:
        prompt = gateway.check_text(payload["inputs"], "inputs")
        parameters = gateway.generation_parameters(payload.get("parameters"))
        request = _new_request(target, request_id, prompt=prompt, parameters=parameters)
        units = 1
    return await _run(caller, target, request, units)


async def _generation(caller: Caller, model: str, stream: bool, **fields):
    check = await licence_check(caller, ModelRef.parse(model))
    if check.garden:
        text = router.routing_text(fields.get("prompt"), fields.get("messages") or [])
        target = await garden_calls.generation_target(check, text)
    else:
        task, base_model, adapter = await _version(check.model_version_id)
        target = Target(check=check, task=task, base_model=base_model, adapter=adapter)
    gateway._require_task(target, protocol.TEXT_GENERATION)
    request = _new_request(target, str(uuid.uuid4()), stream=stream, **fields)
    return target, request


async def generate(*, caller: Caller, model: str, prompt=None, messages=None, parameters):
    """One whole generation (the /v1 endpoints without `stream`)."""
    target, request = await _generation(
        caller, model, False, prompt=prompt, messages=list(messages or []), parameters=parameters
    )
    return await _run(caller, target, request, 1)


@dataclass
class AsyncGatewayStream:
    """gateway.GatewayStream on the event loop: `events()` is an async iterator, and
    `close()` (every end: finished, failed, timed out, the client left) cancels the
    worker's generation and settles the call by what was delivered."""

    request_id: str
    target: Target
    started: float
    slots: list[InFlight]
    _pending: list[StreamEvent] = field(default_factory=list)
    _last_id: str = "0-0"
    _finished: bool = False
    delivered_tokens: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return self.target.headers | {"X-Niche-Request-Id": self.request_id}

    async def _read(self, block_ms: int) -> list[StreamEvent]:
        key = protocol.stream_key(self.request_id)
        try:
            reply = await serving_aredis().xread({key: self._last_id}, block=block_ms, count=64)
        except redis.RedisError as exc:
            raise EngineUnavailable("The token stream is unreachable.") from exc
        events = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                events.append(_event(fields))
        return events

    async def wait_first(self) -> None:
        deadline = self.started + settings.SERVING_TIMEOUT_SECONDS
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise gateway._timeout_error()
            wait = min(left, LIVENESS_CHECK_EVERY_SECONDS)
            self._pending = await self._read(max(1, int(wait * 1000)))
            answered_or_late = self._pending or time.monotonic() >= deadline
            if not answered_or_late and not await _workers_alive():
                raise gateway._no_worker_error()
        if self._pending[0].type == "error":
            first = self._pending[0]
            raise gateway._engine_error(first.code, first.message, first.retry_after)
        observe_stream_first_token(task=self.target.task, seconds=time.monotonic() - self.started)

    async def events(self):
        last_news = time.monotonic()
        while not self._finished:
            events, self._pending = self._pending, []
            if not events:
                events = await self._read(1000)
            if not events:
                if time.monotonic() - last_news > settings.SERVING_TIMEOUT_SECONDS:
                    events = [
                        StreamEvent(
                            type="error",
                            code="engine_timeout",
                            message="The engine stopped sending tokens.",
                        )
                    ]
                else:
                    yield StreamEvent(type="idle")
                    continue
            last_news = time.monotonic()
            for event in events:
                if event.type == "token" and event.text:
                    self.delivered_tokens += 1
                if event.type in ("done", "error"):
                    await self.close(done=event.type == "done")
                    yield event
                    return
                yield event

    async def close(self, *, done: bool = False) -> None:
        await cancel_request(self.request_id)
        if self._finished:
            return
        self._finished = True
        try:
            status = UsageStatus.OK if self.delivered_tokens or done else UsageStatus.ERROR
            await _settle(self.target, self.request_id, status, self.started)
            if done:
                observe_stream_done(
                    task=self.target.task,
                    latency_s=time.monotonic() - self.started,
                    listing=self.target.metrics_listing,
                )
        finally:
            await ainflight_release(self.slots)


async def generate_stream(*, caller: Caller, model: str, prompt=None, messages=None, parameters):
    """A streamed generation, open once the first event arrived (errors before it answer
    with their HTTP status)."""
    target, request = await _generation(
        caller, model, True, prompt=prompt, messages=list(messages or []), parameters=parameters
    )
    return await _open_stream(caller, target, request)


async def _open_stream(caller: Caller, target: Target, request) -> AsyncGatewayStream:
    """Admit, record, send, and wait for the first event of a streamed generation."""
    started = time.monotonic()
    slots = await _admit(caller, target, 1)
    stream = AsyncGatewayStream(
        request_id=request.request_id, target=target, started=started, slots=slots
    )
    try:
        await _record(target, caller, request.request_id, 1)
        await _send(request)
        await stream.wait_first()
    except BaseException:
        await asyncio.shield(stream.close())  # nothing delivered: cancelled, not billed
        raise
    return stream


# --- the specialist router: model "niche/auto" (serving.router) -----------------------------


async def _candidates(caller: Caller, task: str, labels: list[str] | None) -> router.CandidateSet:
    def check_for(slug: str):
        """The licence check from the access cache while the caller's epochs hold."""
        check = access_cache.licence_check_cached(caller.user_id, slug, None, caller.epochs)
        if check is None:
            check = licence_for_call(user=caller.user, listing_slug=slug)
            access_cache.licence_check_store(caller.user_id, slug, None, caller.epochs, check)
        return check

    return await sync_to_async(router.candidate_set)(
        user=caller.user, task=task, labels=labels, check_for=check_for
    )


async def _routes(texts: list[str], found: router.CandidateSet) -> list[router.Route]:
    # The embedding is a torch forward: off the event loop, not on Django's one DB thread.
    started = time.monotonic()
    routes = await sync_to_async(router.decide, thread_sensitive=False)(texts, found)
    generalist = sum(1 for route in routes if route.listing is None)
    observe_routing(
        task=found.task, seconds=time.monotonic() - started,
        specialist=len(routes) - generalist, generalist=generalist,
    )  # fmt: skip
    return routes


async def routed_target(caller: Caller, found: router.CandidateSet, route: router.Route) -> Target:
    """What answers a routed input: the chosen specialist's live version, or the generalist."""
    candidate = router.candidate_for(found, route)
    if candidate is None:
        if found.task == protocol.TEXT_CLASSIFICATION and len(route.labels) < 2:
            raise router.labels_required("specialist you may call")
        return Target(
            check=router.fallback_check(),
            task=found.task,
            base_model=router.fallback_base(found.task),
            adapter=None,
            buyer_id=caller.user_id,
            labels=route.labels,
            route=route,
        )
    task, base_model, adapter = await _version(candidate.check.model_version_id)
    return Target(
        check=candidate.check, task=task, base_model=base_model, adapter=adapter, route=route
    )


async def route_only(
    caller: Caller, *, task: str, inputs: list[str], labels, garden: str | None = None
) -> dict:
    """POST /api/v1/route: the decision for each input, nothing run, nothing billed; with
    `garden`, among that garden's members (the caller must be able to call the garden)."""
    if garden is not None:
        check = await licence_check(caller, ModelRef.parse(garden, field_name="garden"))
        if not check.garden:
            raise InvalidInferenceInput(
                f"{garden} is not a garden.", fields={"garden": ["A garden's slug."]}
            )
        plan = await garden_calls.plan_of(check, task)
        if plan.kind != "router":
            raise InvalidInferenceInput(
                f"{garden} is a pipeline: its classifier decides, not the router.",
                fields={"garden": ["A router garden."]},
            )
        found = await sync_to_async(garden_calls.candidates)(plan, labels)
    else:
        found = await _candidates(caller, task, labels)
    routes = await _routes(inputs, found)
    return {
        "task": task,
        **({"garden": garden} if garden is not None else {}),
        "threshold": settings.ROUTER_THRESHOLD,
        "goal": settings.ROUTER_GOAL,
        "candidates": [c.slug for c in found.candidates],
        "skipped": found.skipped,
        "routes": [route.as_dict() for route in routes],
    }


async def auto_generation_target(caller: Caller, text: str) -> Target:
    found = await _candidates(caller, protocol.TEXT_GENERATION, None)
    (route,) = await _routes([text], found)
    return await routed_target(caller, found, route)


async def auto_generate(*, caller: Caller, prompt=None, messages=None, parameters, stream=False):
    """A /v1 generation (or predict with a prompt) for "niche/auto": routed on the prompt or
    the last user message, then served and metered as a call to whoever answers."""
    target = await auto_generation_target(caller, router.routing_text(prompt, messages or []))
    request = _new_request(
        target, str(uuid.uuid4()), stream=stream, prompt=prompt,
        messages=list(messages or []), parameters=parameters,
    )  # fmt: skip
    if not stream:
        return await _run(caller, target, request, 1)
    return await _open_stream(caller, target, request)


@dataclass
class AutoPrediction:
    """A classification call to "niche/auto": each input routed on its own; the inputs
    that go to one destination are one call to it (one ledger row)."""

    request_id: str
    answers: list[tuple[list[int], GatewayAnswer]]
    routes: list[Any]

    @property
    def headers(self) -> dict[str, str]:
        names = sorted({answer.target.headers["X-Niche-Listing"] for _, answer in self.answers})
        headers = {"X-Niche-Listing": ",".join(names), "X-Niche-Request-Id": self.request_id}
        garden = self.answers[0][1].target.garden if self.answers else None
        if garden is not None:
            headers["X-Niche-Garden"] = garden.plan.slug
        return headers


async def auto_predict(*, caller: Caller, payload: Any):
    """POST /api/v1/models/niche/auto/predict. Classification: {"inputs": [...],
    "labels"?: [...]}; generation: {"inputs": "prompt", "parameters"?: {...}} (a prompt is
    a string: a list of inputs is classification)."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInferenceInput(
            'The body needs an "inputs" member.', fields={"inputs": ["Required."]}
        )
    if isinstance(payload["inputs"], str) and payload.get("task") != protocol.TEXT_CLASSIFICATION:
        prompt = gateway.check_text(payload["inputs"], "inputs")
        parameters = gateway.generation_parameters(payload.get("parameters"))
        return await auto_generate(caller=caller, prompt=prompt, parameters=parameters)
    inputs = gateway.classification_inputs(payload["inputs"])
    labels = router.request_labels(payload.get("labels"))
    found = await _candidates(caller, protocol.TEXT_CLASSIFICATION, labels)
    routes = await _routes(inputs, found)
    planned = []
    for indices in router.by_destination(routes):
        target = await routed_target(caller, found, routes[indices[0]])
        target.check.require_calls(len(indices))  # every destination's quota, before any runs
        planned.append((indices, target))
    return await _answer_each_destination(caller, inputs, planned, routes)


async def _answer_each_destination(caller: Caller, inputs: list[str], planned, routes):
    """A routed classification: the destinations answer side by side. Each is its own call
    (its own ledger row), so a destination that fails leaves the others answered and
    billed, and the error is raised."""
    requests = []
    for indices, target in planned:
        rows = [inputs[i] for i in indices]
        requests.append((indices, target, _new_request(target, str(uuid.uuid4()), inputs=rows)))
    results = await asyncio.gather(
        *(_run(caller, target, request, len(indices)) for indices, target, request in requests),
        return_exceptions=True,
    )
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    answers = [(indices, answer) for (indices, _, _), answer in zip(requests, results, strict=True)]
    return AutoPrediction(request_id=str(uuid.uuid4()), answers=answers, routes=routes)


# --- gardens (serving.garden_calls) ---------------------------------------------------------


async def garden_predict(caller: Caller, check, payload: dict):
    """POST /api/v1/models/{garden}/predict: a generation garden takes a prompt; a
    classification router garden a list of inputs (optional labels), each input routed
    among its members, each destination one call on the garden licence."""
    if isinstance(payload["inputs"], str):
        prompt = gateway.check_text(payload["inputs"], "inputs")
        parameters = gateway.generation_parameters(payload.get("parameters"))
        target = await garden_calls.generation_target(check, prompt)
        request = _new_request(target, str(uuid.uuid4()), prompt=prompt, parameters=parameters)
        return await _run(caller, target, request, 1)
    inputs = gateway.classification_inputs(payload["inputs"])
    labels = router.request_labels(payload.get("labels"))
    planned, routes = await garden_calls.classification_targets(check, inputs, labels)
    return await _answer_each_destination(caller, inputs, planned, routes)
