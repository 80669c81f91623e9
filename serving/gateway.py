"""The inference gateway: every call, from the API, /v1 or the portal, passes here.

Order: (the view checked the key's `infer` scope) → licence check (billing's selector:
live licence, live version, quota left) → input limits → rate limit per user and key (Redis) →
the ledger row, written before the engine runs so the quota is taken atomically → the
engine (the request on a Redis stream the inference workers read, the answer on a list
of its own, streamed tokens on a stream of their own: serving.dispatch) → the row
settled: `ok`, or `error` when the engine failed or timed out (failed calls are not
billed). A refused call (401/403/404/422/429) writes no
row; an answered call writes exactly one. The listing's owner calls without a licence
and without a row.

Every end of a call cancels its work on the worker (a cancel key the engine checks
between decoding steps; the worker also stops a row whose deadline passed): an answer,
an error, a timeout, a client that left. A streamed call is billed when at least one
token of it was delivered (an error after tokens does not make it free; an error before
any token does). It is settled by the server when the stream ends, whoever sees the end
first: the inference worker when it finishes (serving.tasks), or this gateway when it
gives up or the client leaves. A call nobody settled is settled failed by billing's
sweep: a call whose outcome the platform never learned is not billed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from accounts.models import ApiKey, User
from billing.models import UsageStatus
from billing.selectors import LicenceCheck, licence_for_call
from billing.services import (
    platform_usage_record,
    platform_usage_settle,
    usage_record,
    usage_settle,
    usage_settle_served,
)
from marketplace.errors import ApplicationError
from marketplace.metrics import (
    observe_inference,
    observe_stream_done,
    observe_stream_first_token,
)
from serving import dispatch, protocol
from serving.errors import (
    EngineFailed,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    InvalidInferenceInput,
)
from serving.protocol import (
    AdapterRef,
    ChatMessage,
    ErrorCode,
    GenerationParameters,
    InferenceError,
    InferenceRequest,
    InferenceResult,
    Usage,
)
from serving.ratelimit import RateWindow, rate_limit_admit, serving_redis
from training_worker.models import ModelVersion

# Every this many seconds without an answer the gateway asks whether any inference worker
# is alive (their heartbeats in Redis), so a dead engine answers 503 in seconds, not at
# the full timeout; a yes is trusted for LIVENESS_TRUST_SECONDS per web process.
LIVENESS_CHECK_EVERY_SECONDS = 2.0
LIVENESS_TRUST_SECONDS = 5.0
_workers_seen_at = float("-inf")
CHAT_ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64  # each, as OpenAI allows: a request's stop strings are at most 256 chars


# --- what a call names ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """`<listing-slug>` (the live version) or `<listing-slug>@<version-number>`."""

    listing_slug: str
    version_number: int | None = None

    @classmethod
    def parse(cls, ref: str, *, field_name: str = "model") -> ModelRef:
        slug, at, number = str(ref).strip().partition("@")
        if not slug or (at and not number.isdigit()):
            raise InvalidInferenceInput(
                "Name a model as <listing-slug> or <listing-slug>@<version-number>.",
                fields={field_name: ["<listing-slug> or <listing-slug>@<version-number>."]},
            )
        return cls(listing_slug=slug, version_number=int(number) if at else None)


@dataclass(frozen=True)
class Target:
    """What answers a call: the licence check and the version's adapter on its base."""

    check: LicenceCheck
    task: str
    base_model: str
    adapter: AdapterRef | None  # None: the router's generalist fallback (the bare base)
    # The router's generalist: who is metered (billing.PlatformUsage), and the zero-shot
    # labels of a classification fallback.
    buyer_id: int | None = None
    labels: tuple[str, ...] = ()
    route: Any = None  # serving.router.Route when niche/auto chose this target
    # A call to a garden (serving.garden_calls.GardenCall): `check` is the garden
    # licence's (metered there), the adapter its answering member's (None: the generalist).
    garden: Any = None

    @property
    def fallback(self) -> bool:
        return self.adapter is None

    @property
    def platform_metered(self) -> bool:
        """The router's generalist outside a garden: billed by the platform itself."""
        return self.fallback and self.garden is None

    @property
    def metrics_listing(self) -> str:
        """Whose latency histogram a call joins: the listing called (a garden's own slug);
        none for the router's generalist, which no listing sells."""
        return "" if self.platform_metered else self.check.listing_slug

    @property
    def headers(self) -> dict[str, str]:
        if self.garden is not None:
            headers = {
                "X-Niche-Garden": self.check.listing_slug,
                "X-Niche-Listing": self.garden.answered_by,
            }
            if self.adapter is not None:
                headers["X-Niche-Adapter-SHA256"] = self.adapter.sha256
        else:
            headers = {"X-Niche-Listing": self.check.listing_slug}
            if self.adapter is not None:
                headers["X-Niche-Version"] = str(self.check.version_number)
                headers["X-Niche-Adapter-SHA256"] = self.adapter.sha256
        if self.route is not None:
            headers["X-Niche-Routed-Confidence"] = f"{self.route.confidence:.4f}"
        return headers

    @property
    def model_name(self) -> str:
        if self.adapter is None or self.garden is not None:
            return self.check.listing_slug
        return f"{self.check.listing_slug}@{self.check.version_number}"

    @property
    def metered(self) -> bool:
        """Whether a call writes a ledger row: a licence's, or the platform's fallback."""
        return self.platform_metered or self.check.licence_id is not None


@dataclass(frozen=True)
class GatewayAnswer:
    request_id: str
    target: Target
    result: InferenceResult
    latency_ms: int

    @property
    def headers(self) -> dict[str, str]:
        return self.target.headers | {
            "X-Niche-Request-Id": self.request_id,
            # the worker's own time on this request (the rest is queue, network, checks)
            "X-Niche-Engine-Ms": f"{self.result.engine_ms:.1f}",
        }


# --- input limits -----------------------------------------------------------------------


def check_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInferenceInput(
            "Every input must be a non-empty string.", fields={name: ["A non-empty string."]}
        )
    if len(value) > settings.SERVING_MAX_INPUT_CHARS:
        raise InvalidInferenceInput(
            f"An input may hold at most {settings.SERVING_MAX_INPUT_CHARS} characters.",
            fields={name: [f"At most {settings.SERVING_MAX_INPUT_CHARS} characters."]},
        )
    return value


def classification_inputs(inputs: Any) -> list[str]:
    """1 to SERVING_MAX_INPUTS non-empty texts of at most SERVING_MAX_INPUT_CHARS each."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInferenceInput(
            'Send the texts to classify as a list: {"inputs": ["..."]}.',
            fields={"inputs": ["A list of texts."]},
        )
    if len(inputs) > settings.SERVING_MAX_INPUTS:
        raise InvalidInferenceInput(
            f"At most {settings.SERVING_MAX_INPUTS} inputs per call; this call has {len(inputs)}.",
            fields={"inputs": [f"At most {settings.SERVING_MAX_INPUTS} items."]},
        )
    return [check_text(text, "inputs") for text in inputs]


def generation_parameters(raw: Any, *, field_prefix: str = "parameters.") -> GenerationParameters:
    """max_new_tokens 1..SERVING_MAX_NEW_TOKENS, temperature 0..2, top_p (0, 1], stop: up
    to four non-empty strings of at most 64 characters each (as OpenAI's)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InvalidInferenceInput(
            "parameters must be an object.", fields={"parameters": ["An object."]}
        )
    errors: dict[str, list[str]] = {}
    limit = settings.SERVING_MAX_NEW_TOKENS
    max_new = raw.get("max_new_tokens", min(GenerationParameters.max_new_tokens, limit))
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= limit:
        errors[f"{field_prefix}max_new_tokens"] = [f"A whole number from 1 to {limit}."]
    temperature = raw.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        errors[f"{field_prefix}temperature"] = ["A number from 0 to 2."]
    top_p = raw.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        errors[f"{field_prefix}top_p"] = ["A number above 0 and at most 1."]
    stop = raw.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in stop)
    ):
        errors[f"{field_prefix}stop"] = [f"A string or up to {MAX_STOP_STRINGS} strings."]
    elif any(len(s) > MAX_STOP_CHARS for s in stop):
        errors[f"{field_prefix}stop"] = [f"At most {MAX_STOP_CHARS} characters per string."]
    if errors:
        raise InvalidInferenceInput("The generation parameters are not valid.", fields=errors)
    return GenerationParameters(
        max_new_tokens=max_new, temperature=float(temperature), top_p=float(top_p), stop=stop
    )


def chat_messages(messages: Any) -> list[ChatMessage]:
    """1 to SERVING_MAX_INPUTS messages with a known role; SERVING_MAX_INPUT_CHARS in all."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInferenceInput(
            "messages must be a non-empty list.", fields={"messages": ["A non-empty list."]}
        )
    if len(messages) > settings.SERVING_MAX_INPUTS:
        raise InvalidInferenceInput(
            f"At most {settings.SERVING_MAX_INPUTS} messages per call.",
            fields={"messages": [f"At most {settings.SERVING_MAX_INPUTS} items."]},
        )
    parsed = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            texts = [
                p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"
            ]
            content = "".join(t for t in texts if isinstance(t, str))
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise InvalidInferenceInput(
                "Each message needs a role (system, user or assistant) and text content.",
                fields={"messages": ['{"role": "user", "content": "..."}']},
            )
        parsed.append(ChatMessage(role=role, content=content))
    if sum(len(m.content) for m in parsed) > settings.SERVING_MAX_INPUT_CHARS:
        raise InvalidInferenceInput(
            f"The messages may hold at most {settings.SERVING_MAX_INPUT_CHARS} characters in all.",
            fields={"messages": [f"At most {settings.SERVING_MAX_INPUT_CHARS} characters."]},
        )
    return parsed


# --- the steps before the engine --------------------------------------------------------


def _rate_windows(user: User, api_key: ApiKey | None) -> list[RateWindow]:
    """The windows a call counts in: its user's (SERVING_RATE_LIMIT_PER_MINUTE, whichever
    key or the portal it came through), and its key's when the key has a lower limit."""
    windows = [RateWindow(subject=f"user:{user.pk}", limit=settings.SERVING_RATE_LIMIT_PER_MINUTE)]
    if api_key is not None and api_key.rate_limit_per_minute is not None:
        windows.append(RateWindow(subject=f"key:{api_key.pk}", limit=api_key.rate_limit_per_minute))
    return windows


@functools.lru_cache(maxsize=1024)
def _served_version(model_version_id) -> tuple[str, str, AdapterRef]:
    """A version's task, base and adapter, read once per process: a ModelVersion is
    immutable once written (and its id a UUID), so a repeat call costs no query."""
    version = (
        ModelVersion.objects.filter(pk=model_version_id)
        .values(
            "task", "base_model__slug", "adapter_sha256", "adapter_path", "config_path",
            "config_sha256", "labels", "lexical_head_path", "lexical_head_sha256",
            "run_record__resolved_hyperparameters__max_seq_length",
        )
        .get()
    )  # fmt: skip
    max_seq_length = version["run_record__resolved_hyperparameters__max_seq_length"]
    adapter = AdapterRef(
        model_version_id=str(model_version_id),
        sha256=version["adapter_sha256"],
        adapter_path=version["adapter_path"],
        config_path=version["config_path"],
        config_sha256=version["config_sha256"],
        labels=list(version["labels"] or []),
        lexical_head_path=version["lexical_head_path"],
        lexical_head_sha256=version["lexical_head_sha256"],
        max_seq_length=max_seq_length if isinstance(max_seq_length, int) else 0,
    )
    return version["task"], version["base_model__slug"], adapter


def served_version(model_version_id) -> tuple[str, str, AdapterRef]:
    """(task, base model slug, adapter) of a version, as the engine runs it."""
    return _served_version(model_version_id)


class GardenOnTheEventLoop(Exception):
    """The call names a garden: the synchronous views hand it to serving.async_apis,
    whose garden path (serving.garden_calls) is written once, as coroutines."""


def target_resolve(*, user: User, model: ModelRef) -> Target:
    """The licence check (404 listing/version, 403 licence; one query) and what answers
    the call."""
    check = licence_for_call(
        user=user, listing_slug=model.listing_slug, version_number=model.version_number
    )
    if check.garden:
        raise GardenOnTheEventLoop
    task, base_model, adapter = _served_version(check.model_version_id)
    return Target(check=check, task=task, base_model=base_model, adapter=adapter)


def _require_task(target: Target, task: str) -> None:
    if target.task != task:
        raise InvalidInferenceInput(
            f"{target.check.listing_slug} is a {target.task} model; this call needs {task}.",
            code="wrong_task",
            fields={"model": [f"A {task} model."]},
        )


def _admit(*, user: User, api_key: ApiKey | None, target: Target, units: int) -> None:
    """Quota left (429 quota_exceeded), then the rate limit per user and key (429
    rate_limited)."""
    target.check.require_calls(units)
    rate_limit_admit(windows=_rate_windows(user, api_key))


def _record(*, target: Target, api_key: ApiKey | None, request_id: str, units: int) -> None:
    """The ledger row, before the engine runs: takes the quota atomically (QuotaExceeded
    429 with nothing written when a concurrent call took the last one)."""
    if target.platform_metered:
        platform_usage_record(
            buyer_id=target.buyer_id, idempotency_key=request_id, task=target.task,
            units=units, api_key_id=api_key.pk if api_key is not None else None,
        )  # fmt: skip
        return
    if target.check.licence_id is None:
        return  # the owner's own calls are not billed
    usage_record(
        licence_id=target.check.licence_id,
        idempotency_key=request_id,
        units=units,
        api_key_id=api_key.pk if api_key is not None else None,
        listing_version_id=target.check.listing_version_id,
        status=UsageStatus.OK,
        shares=target.garden.shares if target.garden is not None else None,
    )


def _settle(target: Target, request_id: str, status: str, started: float) -> int:
    latency_ms = int((time.monotonic() - started) * 1000)
    if target.platform_metered:
        platform_usage_settle(idempotency_key=request_id, status=status, latency_ms=latency_ms)
        return latency_ms
    if target.check.licence_id is None:
        return latency_ms
    if status != UsageStatus.OK or not usage_settle_served(
        idempotency_key=request_id, latency_ms=latency_ms
    ):
        # A failure gives its units back; a row settled already (the sweep) stays so.
        usage_settle(idempotency_key=request_id, status=status, latency_ms=latency_ms)
    return latency_ms


def cancel_request(request_id: str) -> None:
    """Tell the worker to stop this request (it checks between decoding steps).
    Idempotent; an unreachable Redis leaves the worker's deadline and max_new_tokens to
    bound it."""
    with contextlib.suppress(redis.RedisError):
        serving_redis().set(protocol.cancel_key(request_id), "1", ex=protocol.CANCEL_TTL_SECONDS)


# --- the engine -------------------------------------------------------------------------

_ENGINE_ERRORS: dict[str, type[ApplicationError]] = {
    ErrorCode.INPUT_TOO_LONG: InvalidInferenceInput,
    ErrorCode.INVALID_REQUEST: InvalidInferenceInput,
    ErrorCode.DEADLINE_EXCEEDED: EngineTimeout,
    ErrorCode.ADAPTER_UNAVAILABLE: EngineUnavailable,
    ErrorCode.BASE_UNAVAILABLE: EngineUnavailable,
}


def _engine_error(code: str, message: str, retry_after: float | None = None) -> ApplicationError:
    if code == ErrorCode.OVERLOADED:
        return EngineOverloaded(message, code=code, retry_after=retry_after)
    return _ENGINE_ERRORS.get(code, EngineFailed)(message, code=code)


def _timeout_error() -> EngineTimeout:
    return EngineTimeout(
        f"The engine did not answer within {settings.SERVING_TIMEOUT_SECONDS} s; try again.",
        code="engine_timeout",
    )


def _no_worker_error() -> EngineUnavailable:
    return EngineUnavailable("No inference worker is running; try again shortly.")


def _inference_workers_alive() -> bool:
    """Whether any inference worker beat in the last few seconds (dispatch.WORKERS); a
    yes is trusted for LIVENESS_TRUST_SECONDS per web process."""
    global _workers_seen_at
    if time.monotonic() - _workers_seen_at < LIVENESS_TRUST_SECONDS:
        return True
    try:
        alive = dispatch.workers_alive(serving_redis())
    except redis.RedisError as exc:
        raise EngineUnavailable("The inference queue is unreachable.") from exc
    if alive:
        _workers_seen_at = time.monotonic()
    return alive


def _send(request: InferenceRequest) -> None:
    try:
        dispatch.send(serving_redis(), request)
    except redis.RedisError as exc:
        raise EngineUnavailable("The inference queue is unreachable; try again shortly.") from exc


def _engine_call(request: InferenceRequest, deadline: float) -> InferenceResult:
    """Send the request and wait for its answer until `deadline` (monotonic): 503 when
    no inference worker is alive, 504 when the workers are too slow."""
    _send(request)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timeout_error()
        try:
            data = dispatch.wait(
                serving_redis(),
                request.request_id,
                timeout=min(left, LIVENESS_CHECK_EVERY_SECONDS),
            )
            break
        except redis.RedisError as exc:
            raise EngineUnavailable("The inference queue is unreachable.") from exc
        except dispatch.NoAnswer:
            if time.monotonic() < deadline and not _inference_workers_alive():
                raise _no_worker_error() from None
    return answer_of(data)


def answer_of(data: dict) -> InferenceResult:
    """A worker's answer, or the typed error it carries."""
    answer = protocol.result_from_dict(data)
    if isinstance(answer, InferenceError):
        raise _engine_error(answer.code, answer.message, answer.retry_after)
    return answer


def _new_request(target: Target, request_id: str, **fields) -> InferenceRequest:
    return InferenceRequest(
        request_id=request_id,
        task=target.task,
        base_model=target.base_model,
        adapter=target.adapter,
        deadline=time.time() + settings.SERVING_TIMEOUT_SECONDS,
        labels=list(target.labels),
        **fields,
    )


def adapter_integrity(target: Target, result: InferenceResult) -> None:
    """The engine answered with the adapter the call named (none for the generalist)."""
    expected = target.adapter.sha256 if target.adapter is not None else None
    if result.adapter_sha256 not in (None, expected):
        raise EngineFailed(
            "The engine answered with another adapter than the live version's.",
            code=ErrorCode.ADAPTER_INTEGRITY,
        )


def _run(*, user, api_key, target: Target, request: InferenceRequest, units: int):
    started = time.monotonic()
    deadline = started + settings.SERVING_TIMEOUT_SECONDS
    _admit(user=user, api_key=api_key, target=target, units=units)
    _record(target=target, api_key=api_key, request_id=request.request_id, units=units)
    try:
        result = _engine_call(request, deadline)
        adapter_integrity(target, result)
    except BaseException:
        cancel_request(request.request_id)  # a timeout must not leave the worker generating
        _settle(target, request.request_id, UsageStatus.ERROR, started)
        raise
    latency_ms = _settle(target, request.request_id, UsageStatus.OK, started)
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


# --- the calls --------------------------------------------------------------------------


def predict(
    *,
    user: User,
    api_key: ApiKey | None,
    listing_ref: str,
    payload: Any,
    request_id: str | None = None,
) -> GatewayAnswer:
    """`POST /api/v1/models/{listing}/predict` and the portal's try-it box.

    Classification: {"inputs": ["text", ...]} (each input counts as one call against the
    quota); generation: {"inputs": "prompt", "parameters": {...}} (one call). Raises the
    typed errors of the module docstring; answers name the version and adapter.
    """
    request_id = request_id or str(uuid.uuid4())
    model = ModelRef.parse(listing_ref, field_name="listing")
    target = target_resolve(user=user, model=model)
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInferenceInput(
            'The body needs an "inputs" member.', fields={"inputs": ["Required."]}
        )
    if target.task == protocol.TEXT_CLASSIFICATION:
        inputs = classification_inputs(payload["inputs"])
        request = _new_request(target, request_id, inputs=inputs)
        units = len(inputs)
    else:
        prompt = check_text(payload["inputs"], "inputs")
        parameters = generation_parameters(payload.get("parameters"))
        request = _new_request(target, request_id, prompt=prompt, parameters=parameters)
        units = 1
    return _run(user=user, api_key=api_key, target=target, request=request, units=units)


def generate(
    *,
    user: User,
    api_key: ApiKey | None,
    model: str,
    prompt: str | None = None,
    messages: list[ChatMessage] | None = None,
    parameters: GenerationParameters,
    request_id: str | None = None,
) -> GatewayAnswer:
    """One whole generation (the /v1 endpoints without `stream`)."""
    target, request = _generation_request(
        user=user, model=model, prompt=prompt, messages=messages, parameters=parameters,
        stream=False, request_id=request_id,
    )  # fmt: skip
    return _run(user=user, api_key=api_key, target=target, request=request, units=1)


def _generation_request(*, user, model, prompt, messages, parameters, stream, request_id):
    target = target_resolve(user=user, model=ModelRef.parse(model))
    _require_task(target, protocol.TEXT_GENERATION)
    request = _new_request(
        target,
        request_id or str(uuid.uuid4()),
        prompt=prompt,
        messages=list(messages or []),
        parameters=parameters,
        stream=stream,
    )
    return target, request


# --- streaming --------------------------------------------------------------------------


@dataclass
class StreamEvent:
    """A token (`text`), the end (`finish_reason`, `usage`) or an error (`code`)."""

    type: str  # "token" | "done" | "error" | "idle"
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    code: str = ""
    message: str = ""
    retry_after: float | None = None


def _event(fields: dict[bytes, bytes]) -> StreamEvent:
    data = {k.decode(): v.decode() for k, v in fields.items()}
    kind = data.get("type", "")
    if kind == "token":
        return StreamEvent(type="token", text=data.get("text", ""))
    if kind == "done":
        usage = Usage(**json.loads(data.get("usage") or "{}"))
        return StreamEvent(type="done", finish_reason=data.get("finish_reason"), usage=usage)
    return StreamEvent(
        type="error",
        code=data.get("code") or ErrorCode.ENGINE_ERROR,
        message=data.get("message") or "The engine failed.",
        retry_after=float(data["retry_after"]) if data.get("retry_after") else None,
    )


@dataclass
class GatewayStream:
    """An open streamed generation. `events()` yields StreamEvents (and `idle` ones
    every second without news, so the view can write a keep-alive and learn that its
    client left); `close()` ends it from any path (it always cancels the worker's
    generation and settles the call by what was delivered)."""

    request_id: str
    target: Target
    started: float
    _pending: list[StreamEvent] = field(default_factory=list)
    _last_id: str = "0-0"
    _finished: bool = False
    delivered_tokens: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return self.target.headers | {"X-Niche-Request-Id": self.request_id}

    def _read(self, block_ms: int) -> list[StreamEvent]:
        key = protocol.stream_key(self.request_id)
        try:
            reply = serving_redis().xread({key: self._last_id}, block=block_ms, count=64)
        except redis.RedisError as exc:
            raise EngineUnavailable("The token stream is unreachable.") from exc
        events = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                events.append(_event(fields))
        return events

    def _wait_first(self) -> None:
        """Block until the worker's first event (errors before it get an HTTP status)."""
        deadline = self.started + settings.SERVING_TIMEOUT_SECONDS
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error()
            wait = min(left, LIVENESS_CHECK_EVERY_SECONDS)
            self._pending = self._read(max(1, int(wait * 1000)))
            answered_or_late = self._pending or time.monotonic() >= deadline
            if not answered_or_late and not _inference_workers_alive():
                raise _no_worker_error()
        if self._pending[0].type == "error":
            first = self._pending[0]
            raise _engine_error(first.code, first.message, first.retry_after)
        observe_stream_first_token(task=self.target.task, seconds=time.monotonic() - self.started)

    def events(self) -> Iterator[StreamEvent]:
        last_news = time.monotonic()
        while not self._finished:
            events, self._pending = self._pending, []
            if not events:
                events = self._read(1000)
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
                    self.close(done=event.type == "done")
                    yield event
                    return
                yield event

    def close(self, *, done: bool = False) -> None:
        """End the stream from any path (finished, failed, timed out, the client left):
        the worker is told to stop (a no-op once it has), and the call is settled by
        what was delivered: billed once a token reached the stream, free otherwise.
        Idempotent."""
        cancel_request(self.request_id)
        if self._finished:
            return
        self._finished = True
        status = UsageStatus.OK if self.delivered_tokens or done else UsageStatus.ERROR
        _settle(self.target, self.request_id, status, self.started)
        if done:
            observe_stream_done(
                task=self.target.task,
                latency_s=time.monotonic() - self.started,
                listing=self.target.metrics_listing,
            )


def generate_stream(
    *,
    user: User,
    api_key: ApiKey | None,
    model: str,
    prompt: str | None = None,
    messages: list[ChatMessage] | None = None,
    parameters: GenerationParameters,
    request_id: str | None = None,
) -> GatewayStream:
    """A streamed generation, open once the first event arrived (so timeouts and engine
    errors before the first token still answer with their HTTP status)."""
    target, request = _generation_request(
        user=user, model=model, prompt=prompt, messages=messages, parameters=parameters,
        stream=True, request_id=request_id,
    )  # fmt: skip
    stream = GatewayStream(request_id=request.request_id, target=target, started=time.monotonic())
    _admit(user=user, api_key=api_key, target=target, units=1)
    _record(target=target, api_key=api_key, request_id=request.request_id, units=1)
    try:
        _send(request)
        stream._wait_first()
    except BaseException:
        stream.close()  # nothing was delivered: cancelled, and not billed
        raise
    return stream
