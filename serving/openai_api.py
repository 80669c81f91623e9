"""The OpenAI-compatible API under /v1: chat completions, completions, models.

The official `openai` client pointed at `<niche>/v1` with a Niche key works unchanged.
`model` is `<listing-slug>` or `<listing-slug>@<version-number>`. Errors leave in
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the same HTTP
statuses as the rest of the API (and Retry-After on 429).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from accounts.authentication import calling_api_key
from accounts.models import ApiKey
from marketplace.api import BaseApi
from marketplace.errors import api_exception_handler
from serving import gateway, selectors
from serving.errors import InvalidInferenceInput

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, fields: dict | None = None) -> dict:
    param = next(iter(fields), None) if fields else None
    if param == "non_field_errors":
        param = None
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if code == "quota_exceeded":
        kind = "insufficient_quota"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_exception_handler(exc, context):
    """The one error contract, reshaped: {"error": {"message", "type", "param", "code"}}."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        error = response.data["error"]
        response.data = openai_error(
            response.status_code, error.get("code"), error.get("message"), error.get("fields")
        )
    return response


@csrf_exempt  # changes nothing: an unknown POST gets its 404, not a CSRF page
def openai_not_found(request, *args, **kwargs):
    return JsonResponse(
        openai_error(404, "not_found", f"No endpoint at {request.path}."), status=404
    )


class OpenAiApi(BaseApi):
    def get_exception_handler(self):
        return openai_exception_handler

    @property
    def api_key(self) -> ApiKey | None:
        return calling_api_key(self.request)


def _body(request) -> dict:
    if not isinstance(request.data, dict):
        raise InvalidInferenceInput("The body must be a JSON object.")
    return request.data


def _parameters(body: dict) -> gateway.GenerationParameters:
    """OpenAI's names → the gateway's (max_completion_tokens or max_tokens, temperature,
    top_p, stop)."""
    raw = {
        name: body[name] for name in ("temperature", "top_p", "stop") if body.get(name) is not None
    }
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        raw["max_new_tokens"] = max_tokens
    if body.get("n", 1) not in (1, None):
        raise InvalidInferenceInput("Only n=1 is served.", fields={"n": ["Only 1."]})
    return gateway.generation_parameters(raw, field_prefix="")


def _envelope(*, id: str, object: str, created: int, model: str, choices: list, usage) -> dict:
    """The body every completion answer and stream chunk shares (chat and plain)."""
    return {
        "id": id, "object": object, "created": created, "model": model, "choices": choices,
        "usage": usage,
    }  # fmt: skip


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInferenceInput(
            "Name the model: <listing-slug>[@<version>].", fields={"model": ["Required."]}
        )
    return model


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _streaming_response(stream: gateway.GatewayStream, chunk) -> StreamingHttpResponse:
    """Server-sent events: one chunk per token, the finish_reason chunk, a usage chunk
    (choices []), then `data: [DONE]`. Closing the response early (the client left)
    cancels the generation on the worker."""

    def lines():
        try:
            yield _sse(chunk(first=True))
            for event in stream.events():
                if event.type == "idle":
                    yield ": keep-alive\n\n"  # an SSE comment; a gone client fails here
                elif event.type == "token":
                    yield _sse(chunk(text=event.text))
                elif event.type == "done":
                    yield _sse(chunk(finish_reason=event.finish_reason))
                    yield _sse(chunk(usage=asdict(event.usage)))
                    yield _sse("[DONE]")
                else:
                    status = 504 if event.code == "engine_timeout" else 502
                    yield _sse(openai_error(status, event.code, event.message))
        finally:
            stream.close()

    response = StreamingHttpResponse(lines(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    for name, value in stream.headers.items():
        response[name] = value
    return response


def chat_chunk_maker(stream, created: int):
    """Builds the chat stream's chunks (role first, then deltas, finish, usage)."""
    chunk_id = f"chatcmpl-{stream.request_id}"

    def chunk(first=False, text=None, finish_reason=None, usage=None):
        choices = []
        if usage is None:
            delta = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta = {"content": text}
            choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return _envelope(
            id=chunk_id, object="chat.completion.chunk", created=created,
            model=stream.target.model_name, choices=choices, usage=usage,
        )  # fmt: skip

    return chunk


AUTO_MODEL = "niche/auto"  # serving.router.AUTO_MODEL


def _auto_sync(request, cls):
    """niche/auto for a synchronous (WSGI) caller: the event loop's handler, run to its end
    (a stream is read whole, then sent)."""
    from asgiref.sync import async_to_sync

    from serving import async_apis
    from serving.apis import _caller

    handler = async_apis.chat_completions if cls is ChatCompletionsApi else async_apis.completions
    return async_to_sync(handler)(_caller(request), request.data)


def chat_body(answer, created: int) -> dict:
    output = answer.result.outputs
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": output.text},
        "finish_reason": output.finish_reason,
    }
    return _envelope(
        id=f"chatcmpl-{answer.request_id}", object="chat.completion", created=created,
        model=answer.target.model_name, choices=[choice], usage=asdict(answer.result.usage),
    )  # fmt: skip


class ChatCompletionsApi(OpenAiApi):
    """Declares the route (scope, schema); serving.async_apis.chat_completions serves it
    on the event loop. This synchronous post is the same call for WSGI-only callers."""

    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="openai_chat_completions",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="OpenAI-compatible chat completions (stream: true for server-sent events).",
    )
    def post(self, request):
        body = _body(request)
        model, parameters = _model(body), _parameters(body)
        messages = gateway.chat_messages(body.get("messages"))
        created = int(time.time())
        if model == AUTO_MODEL:
            return _auto_sync(request, self.__class__)
        try:
            return self._generate(request, body, model, parameters, created, messages=messages)
        except gateway.GardenOnTheEventLoop:
            return _auto_sync(request, self.__class__)

    def _generate(self, request, body, model, parameters, created, messages):
        if body.get("stream"):
            stream = gateway.generate_stream(
                user=request.user, api_key=self.api_key, model=model, messages=messages,
                parameters=parameters,
            )  # fmt: skip
            return _streaming_response(stream, chat_chunk_maker(stream, created))
        answer = gateway.generate(
            user=request.user, api_key=self.api_key, model=model, messages=messages,
            parameters=parameters,
        )  # fmt: skip
        return Response(chat_body(answer, created), headers=answer.headers)


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInferenceInput(
            "prompt must be one non-empty string.", fields={"prompt": ["One string."]}
        )
    return gateway.check_text(prompt, "prompt")


def completion_chunk_maker(stream, created: int):
    chunk_id = f"cmpl-{stream.request_id}"

    def chunk(first=False, text=None, finish_reason=None, usage=None):
        choices = []
        if usage is None:
            choices = [
                {"index": 0, "text": text or "", "logprobs": None,
                 "finish_reason": finish_reason}
            ]  # fmt: skip
        return _envelope(
            id=chunk_id, object="text_completion", created=created,
            model=stream.target.model_name, choices=choices, usage=usage,
        )  # fmt: skip

    return chunk


def completion_body(answer, created: int) -> dict:
    output = answer.result.outputs
    choice = {
        "index": 0,
        "text": output.text,
        "logprobs": None,
        "finish_reason": output.finish_reason,
    }
    return _envelope(
        id=f"cmpl-{answer.request_id}", object="text_completion", created=created,
        model=answer.target.model_name, choices=[choice], usage=asdict(answer.result.usage),
    )  # fmt: skip


class CompletionsApi(OpenAiApi):
    """Declares the route (scope, schema); serving.async_apis.completions serves it on
    the event loop. This synchronous post is the same call for WSGI-only callers."""

    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="openai_completions",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="OpenAI-compatible completions (stream: true for server-sent events).",
    )
    def post(self, request):
        body = _body(request)
        model, parameters, prompt = _model(body), _parameters(body), _prompt(body)
        created = int(time.time())
        if model == AUTO_MODEL:
            return _auto_sync(request, self.__class__)
        try:
            return self._generate(request, body, model, parameters, created, prompt=prompt)
        except gateway.GardenOnTheEventLoop:
            return _auto_sync(request, self.__class__)

    def _generate(self, request, body, model, parameters, created, prompt):
        if body.get("stream"):
            stream = gateway.generate_stream(
                user=request.user, api_key=self.api_key, model=model, prompt=prompt,
                parameters=parameters,
            )  # fmt: skip
            return _streaming_response(stream, completion_chunk_maker(stream, created))
        answer = gateway.generate(
            user=request.user, api_key=self.api_key, model=model, prompt=prompt,
            parameters=parameters,
        )  # fmt: skip
        return Response(completion_body(answer, created), headers=answer.headers)


def _model_object(model: selectors.CallableModel) -> dict:
    return {
        "id": model.slug,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owner_name,
        "task": model.task,
    }


class ModelListApi(OpenAiApi):
    """What this key may call: licensed listings (free trials too) and the caller's own."""

    required_scopes = {"GET": "infer"}

    @extend_schema(
        operation_id="openai_models_list",
        responses=OpenApiTypes.OBJECT,
        summary="The models this key may call.",
    )
    def get(self, request):
        models = selectors.callable_models(user=request.user)
        # The router is callable by every key with `infer` (the generalist answers when no
        # specialist it may call fits): listed first, owned by the platform.
        auto = {"id": AUTO_MODEL, "object": "model", "created": 0, "owned_by": "niche",
                "task": "router"}  # fmt: skip
        return Response({"object": "list", "data": [auto, *(_model_object(m) for m in models)]})


class ModelDetailApi(OpenAiApi):
    required_scopes = {"GET": "infer"}

    @extend_schema(
        operation_id="openai_models_retrieve",
        responses=OpenApiTypes.OBJECT,
        summary="One model this key may call.",
    )
    def get(self, request, model: str):
        slug = gateway.ModelRef.parse(model).listing_slug
        for found in selectors.callable_models(user=request.user):
            if found.slug == slug:
                return Response(_model_object(found))
        return JsonResponse(
            openai_error(404, "model_not_found", f"You may not call {model}.", {"model": []}),
            status=404,
        )
