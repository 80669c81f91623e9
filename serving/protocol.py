"""The contract between the gateway (web processes) and the engine (inference workers).

Plain dataclasses and JSON, no torch: web processes import this module, workers too.

- The gateway sends ONE Celery task per HTTP request, ``serving.tasks.infer`` (routed to
  the ``inference`` queue), whose single argument is ``InferenceRequest.to_dict()``.
- Whole answers come back through the Celery result backend: the task returns
  ``InferenceResult.to_dict()`` or ``InferenceError.to_dict()`` (``{"error": {...}}``);
  read either with ``result_from_dict``.
- Streamed tokens (``stream=True``, generation only) travel on a Redis stream per request,
  ``stream_key(request_id)``: XADD entries ``{"type": "token", "text": ...}``, then exactly
  one ``{"type": "done", "finish_reason": ..., "usage": "<json>"}`` or
  ``{"type": "error", "code": ..., "message": ...}``. The key expires after
  ``STREAM_TTL_SECONDS`` and holds at most ``STREAM_MAX_ENTRIES`` entries (XADD MAXLEN). A
  stream is ordered and replayable, so a reader that connects late misses nothing; the web
  reads it with ``XREAD BLOCK`` (redis-py). The task still returns the whole result
  through the result backend as well.
- A client that goes away: the gateway sets ``cancel_key(request_id)`` (any value, with a
  TTL); the worker checks it between decode steps, stops and frees its batch slot, and
  finishes with ``finish_reason="cancelled"``.
- ``deadline`` is a unix time; a worker that picks the request up after it drops it with
  the error code ``deadline_exceeded`` (nobody is waiting any more), and a running row
  whose deadline passes leaves its batch at the next decoding step.
- ``priority``: ``"interactive"`` (the default) or ``"batch"`` (OpenAI Batch API rows):
  batch requests only use the room interactive ones leave (serving/engine/scheduler.py).
- A worker whose waiting queue for the request's lane is full answers at once with the
  code ``overloaded`` and ``retry_after`` (seconds) in the error, instead of queueing it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TASK_NAME = "serving.tasks.infer"
QUEUE = "inference"

TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
Task = Literal["text-classification", "text-generation"]

PRIORITY_INTERACTIVE = "interactive"  # a buyer waits on the answer
PRIORITY_BATCH = "batch"  # a Batch API row: only the capacity interactive calls leave
PRIORITIES = (PRIORITY_INTERACTIVE, PRIORITY_BATCH)  # served in this order

STREAM_TTL_SECONDS = 300
# A stream holds one entry per decoding step that made text (at most max_new_tokens) and
# one end; XADD trims it to this many (MAXLEN), a bound whatever the worker writes.
STREAM_MAX_ENTRIES = 1025
CANCEL_TTL_SECONDS = 300


def stream_key(request_id: str) -> str:
    return f"serving:stream:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"serving:cancel:{request_id}"


class ErrorCode:
    """Codes an engine error may carry (the gateway maps them to HTTP statuses)."""

    ADAPTER_INTEGRITY = "adapter_integrity"  # a stored file does not hash to the ref's SHA-256
    ADAPTER_UNAVAILABLE = "adapter_unavailable"  # files missing, not safetensors, unsupported
    BASE_UNAVAILABLE = "base_unavailable"  # the base model cannot be loaded on this worker
    INPUT_TOO_LONG = "input_too_long"  # more tokens than the base's context
    INVALID_REQUEST = "invalid_request"  # a request the protocol does not allow
    DEADLINE_EXCEEDED = "deadline_exceeded"  # picked up after its deadline
    OVERLOADED = "overloaded"  # the lane's waiting queue is full; error.retry_after says when
    ENGINE_ERROR = "engine_error"  # anything else (logged on the worker)


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter to apply: the version row's files and the hash they must have."""

    model_version_id: str
    sha256: str  # SHA-256 of adapter_model.safetensors, from the ModelVersion row
    adapter_path: str  # storage name of adapter_model.safetensors
    config_path: str  # storage name of adapter_config.json
    # SHA-256 of adapter_config.json, from the ModelVersion row: lora_alpha, the rank and
    # the target modules are checked as the weights are ("" is refused).
    config_sha256: str = ""
    labels: list[str] = field(default_factory=list)  # classification labels, in id order
    # Classification: the lexical head blended with the adapter (lexical_head.py) and the
    # SHA-256 it must have; "" when the adapter alone is served.
    lexical_head_path: str = ""
    lexical_head_sha256: str = ""
    # Classification: tokens kept per row, as the evaluation kept them (the run's resolved
    # max_seq_length); 0 = the engine's default.
    max_seq_length: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterRef:
        return cls(
            model_version_id=str(data["model_version_id"]),
            sha256=str(data["sha256"]),
            adapter_path=str(data["adapter_path"]),
            config_path=str(data["config_path"]),
            config_sha256=str(data.get("config_sha256") or ""),
            labels=[str(label) for label in data.get("labels") or []],
            lexical_head_path=str(data.get("lexical_head_path") or ""),
            lexical_head_sha256=str(data.get("lexical_head_sha256") or ""),
            max_seq_length=int(data.get("max_seq_length") or 0),
        )


@dataclass(frozen=True)
class GenerationParameters:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerationParameters:
        data = data or {}
        stop = data.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        return cls(
            max_new_tokens=int(data.get("max_new_tokens", cls.max_new_tokens)),
            temperature=float(data.get("temperature", cls.temperature)),
            top_p=float(data.get("top_p", cls.top_p)),
            stop=[str(s) for s in stop],
        )


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


def _priority(value: Any) -> str:
    priority = str(value or PRIORITY_INTERACTIVE)
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}: {priority!r}")
    return priority


@dataclass(frozen=True)
class InferenceRequest:
    """One HTTP request's work.

    - classification: ``inputs`` is a list of texts;
    - generation: exactly one of ``prompt`` (completions, /predict) or ``messages`` (chat;
      the worker renders them with the base's chat template, because web processes have
      no tokenizer).
    ``adapter`` None means the bare base model: generation from the un-adapted base, or
    classification zero-shot over ``labels`` (the router's generalist fallback).
    """

    request_id: str
    task: Task
    base_model: str  # BaseModel slug
    adapter: AdapterRef | None
    inputs: list[str] = field(default_factory=list)
    prompt: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    parameters: GenerationParameters = field(default_factory=GenerationParameters)
    stream: bool = False
    deadline: float | None = None  # unix time
    priority: str = "interactive"  # PRIORITY_INTERACTIVE | PRIORITY_BATCH
    labels: list[str] = field(default_factory=list)  # zero-shot classification's label names

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceRequest:
        task = data["task"]
        if task not in (TEXT_CLASSIFICATION, TEXT_GENERATION):
            raise ValueError(f"task must be text-classification or text-generation: {task!r}")
        adapter = data.get("adapter")
        return cls(
            request_id=str(data["request_id"]),
            task=task,
            base_model=str(data["base_model"]),
            adapter=AdapterRef.from_dict(adapter) if adapter else None,
            inputs=[str(text) for text in data.get("inputs") or []],
            prompt=data.get("prompt"),
            messages=[
                ChatMessage(role=str(m["role"]), content=str(m["content"]))
                for m in data.get("messages") or []
            ],
            parameters=GenerationParameters.from_dict(data.get("parameters")),
            stream=bool(data.get("stream", False)),
            deadline=data.get("deadline"),
            priority=_priority(data.get("priority")),
            labels=[str(label) for label in data.get("labels") or []],
        )


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ClassificationOutput:
    label: str
    scores: dict[str, float]  # every label's softmax probability


@dataclass(frozen=True)
class GenerationOutput:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) | "length" | "cancelled"


@dataclass(frozen=True)
class InferenceResult:
    """A whole answer: ``outputs`` is a list of ClassificationOutput (one per input) for
    classification and one GenerationOutput for generation."""

    request_id: str
    outputs: list[ClassificationOutput] | GenerationOutput
    usage: Usage
    adapter_sha256: str | None
    batch_size: int  # rows in the forward pass this request shared
    engine_ms: float  # time on the worker from pickup to answer

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class InferenceError:
    request_id: str
    code: str
    message: str
    retry_after: float | None = None  # seconds; with OVERLOADED (the gateway's Retry-After)

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return {"request_id": self.request_id, "error": error}


def result_from_dict(data: dict[str, Any]) -> InferenceResult | InferenceError:
    """Parse what the task returned (result backend)."""
    if "error" in data:
        return InferenceError(
            request_id=str(data.get("request_id", "")),
            code=str(data["error"]["code"]),
            message=str(data["error"]["message"]),
            retry_after=data["error"].get("retry_after"),
        )
    outputs_data = data["outputs"]
    outputs: list[ClassificationOutput] | GenerationOutput
    if isinstance(outputs_data, list):
        outputs = [
            ClassificationOutput(label=o["label"], scores=dict(o["scores"])) for o in outputs_data
        ]
    else:
        outputs = GenerationOutput(
            text=outputs_data["text"], finish_reason=outputs_data["finish_reason"]
        )
    return InferenceResult(
        request_id=str(data["request_id"]),
        outputs=outputs,
        usage=Usage(**data["usage"]),
        adapter_sha256=data.get("adapter_sha256"),
        batch_size=int(data["batch_size"]),
        engine_ms=float(data["engine_ms"]),
    )


def stream_event_token(text: str) -> dict[str, str]:
    return {"type": "token", "text": text}


def stream_event_done(finish_reason: str, usage: Usage) -> dict[str, str]:
    return {"type": "done", "finish_reason": finish_reason, "usage": json.dumps(asdict(usage))}


def stream_event_error(code: str, message: str, retry_after: float | None = None) -> dict[str, str]:
    event = {"type": "error", "code": code, "message": message}
    if retry_after is not None:
        event["retry_after"] = str(retry_after)
    return event
