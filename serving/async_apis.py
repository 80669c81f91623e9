"""The gateway's HTTP face under ASGI: predict, chat completions and completions as
coroutines (serving.gateway_async), so a waiting call or an open stream holds no thread.

Each stays declared by its DRF class (serving.apis.PredictApi, serving.openai_api's
ChatCompletionsApi and CompletionsApi: their `required_scopes`, their OpenAPI schema);
`async_view(cls, handler)` returns the coroutine Django routes to, carrying `cls` so the
schema, the authorization matrix and the deny-by-default check read the class as before.
What DRF did for these views is done here, the same way: an API key (`Authorization:
Bearer nk_...`, its scope checked) or a signed-in session (CSRF checked); a JSON body;
every error in the one error contract (/v1: OpenAI's shape), with Retry-After on 429 and
503 where there is one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from django.http import JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from marketplace.errors import ApplicationError, error_body
from serving import access_cache, gateway, gateway_async, openai_api, protocol, router
from serving.apis import niche_block, predict_body
from serving.errors import InvalidInferenceInput
from serving.ratelimit import serving_aredis


class NotAuthenticated(ApplicationError):
    status = 401
    default_code = "not_authenticated"


class AuthenticationFailed(ApplicationError):
    status = 401
    default_code = "authentication_failed"


class PermissionDenied(ApplicationError):
    status = 403
    default_code = "permission_denied"


class MalformedRequest(ApplicationError):
    status = 400
    default_code = "malformed_request"


class UnsupportedMediaType(ApplicationError):
    status = 415
    default_code = "unsupported_media_type"


class MethodNotAllowed(ApplicationError):
    status = 405
    default_code = "method_not_allowed"


class _Csrf(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


def _enforce_csrf(request) -> None:
    """As DRF's SessionAuthentication: a signed-in browser's POST carries its token."""
    check = _Csrf(lambda _request: None)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    if reason:
        raise PermissionDenied(f"CSRF Failed: {reason}")


async def authenticate(request, *, scope: str) -> gateway_async.Caller:
    """The caller, by API key or session, allowed `scope`; typed errors otherwise."""
    header = request.headers.get("Authorization", "")
    parts = header.split()
    if parts and parts[0] == "Bearer":
        if len(parts) != 2:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
        entry = await access_cache.key_entry(serving_aredis(), parts[1])
        if entry is None:
            raise AuthenticationFailed("The API key is invalid or has been revoked.")
        if scope not in entry.scopes:
            raise PermissionDenied(f"This API key lacks the '{scope}' scope.")
        return gateway_async.Caller(
            user_id=entry.user_id,
            key_id=entry.key_id,
            key_rate_limit=entry.rate_limit_per_minute,
            epochs=entry.epochs if entry.epochs[0] >= 0 else None,
        )
    user = await request.auser()
    if not user.is_authenticated:
        raise NotAuthenticated("Authentication credentials were not provided.")
    _enforce_csrf(request)
    epochs = await access_cache.current_epochs(serving_aredis(), user.pk)
    return gateway_async.Caller(user_id=user.pk, epochs=epochs)


def _json_body(request) -> object:
    if not request.body:
        return {}
    content_type = request.content_type or ""
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f'Unsupported media type "{content_type}" in request.')
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"JSON parse error - {exc}") from None


def _error_response(exc: ApplicationError, *, openai: bool) -> JsonResponse:
    body = (
        openai_api.openai_error(exc.status, exc.code, exc.message, exc.fields)
        if openai
        else error_body(exc.code, exc.message, exc.fields)
    )
    response = JsonResponse(body, status=exc.status)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    if exc.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    if exc.status == 405:
        response["Allow"] = "POST"
    return response


Handler = Callable[..., Awaitable[object]]


def async_view(cls, handler: Handler, *, openai: bool):
    """The coroutine Django routes to for `cls` (its POST), with `cls` attached."""
    scope = cls.required_scopes["POST"]

    async def view(request, **kwargs):
        try:
            if request.method != "POST":
                raise MethodNotAllowed(f'Method "{request.method}" not allowed.')
            caller = await authenticate(request, scope=scope)
            return await handler(caller, _json_body(request), **kwargs)
        except ApplicationError as exc:
            return _error_response(exc, openai=openai)

    view.cls = view.view_class = cls  # DRF's and Django's names for the declaring class
    view.initkwargs = view.view_initkwargs = {}
    view.csrf_exempt = True  # an API key needs none; a session's token is checked above
    view.__name__ = cls.__name__
    view.__doc__ = cls.__doc__
    return view


# --- the three calls ---------------------------------------------------------------------------


async def predict(caller, body, *, listing: str):
    answer = await gateway_async.predict(caller=caller, listing_ref=listing, payload=body)
    if isinstance(answer, gateway_async.AutoPrediction):  # a classification garden
        return JsonResponse(auto_predictions_body(answer), headers=answer.headers)
    return JsonResponse(predict_body(answer), headers=answer.headers)


async def auto_predict(caller, body):
    """POST /api/v1/models/niche/auto/predict: the router picks who answers."""
    answer = await gateway_async.auto_predict(caller=caller, payload=body)
    if isinstance(answer, gateway.GatewayAnswer):  # a generation
        return JsonResponse(predict_body(answer), headers=answer.headers)
    return JsonResponse(auto_predictions_body(answer), headers=answer.headers)


def auto_predictions_body(auto: gateway_async.AutoPrediction) -> dict:
    predictions: list[dict | None] = [None] * len(auto.routes)
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for indices, answer in auto.answers:
        for index, output in zip(indices, answer.result.outputs, strict=True):
            predictions[index] = {
                "label": output.label,
                "scores": output.scores,
                # the version that answered (a garden's member, or the generalist)
                "routed_to": (
                    answer.target.garden.answered_by
                    if answer.target.garden is not None
                    else answer.target.model_name
                ),
            }
        for name, value in asdict(answer.result.usage).items():
            usage[name] += value
    garden = auto.answers[0][1].target.garden if auto.answers else None
    return {
        "id": auto.request_id,
        "model": garden.plan.slug if garden is not None else router.AUTO_MODEL,
        "predictions": predictions,
        "niche": {"routes": [route.as_dict() for route in auto.routes]},
        "usage": usage,
        "latency_ms": max(answer.latency_ms for _, answer in auto.answers),
    }


async def route(caller, body):
    """POST /api/v1/route: {"task", "inputs": [...], "labels"?, "garden"?} -> each input's
    route (among a router garden's members when `garden` names one)."""
    body = _object(body)
    task = router.request_task(body.get("task"))
    inputs = gateway.classification_inputs(body.get("inputs"))
    labels = router.request_labels(body.get("labels"))
    if labels is not None and task != protocol.TEXT_CLASSIFICATION:
        raise InvalidInferenceInput(
            "labels apply to text-classification only.", fields={"labels": ["Leave it out."]}
        )
    garden = body.get("garden")
    if garden is not None and not isinstance(garden, str):
        raise InvalidInferenceInput("garden is a garden's slug.", fields={"garden": ["A slug."]})
    return JsonResponse(
        await gateway_async.route_only(
            caller, task=task, inputs=inputs, labels=labels, garden=garden
        )
    )


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise InvalidInferenceInput("The body must be a JSON object.")
    return body


async def chat_completions(caller, body):
    body = _object(body)
    model, parameters = openai_api._model(body), openai_api._parameters(body)
    messages = gateway.chat_messages(body.get("messages"))
    created = int(time.time())
    if model == router.AUTO_MODEL:
        return await _auto(caller, body, created, parameters, messages=messages)
    if body.get("stream"):
        stream = await gateway_async.generate_stream(
            caller=caller, model=model, messages=messages, parameters=parameters
        )
        return _streaming(stream, openai_api.chat_chunk_maker(stream, created))
    answer = await gateway_async.generate(
        caller=caller, model=model, messages=messages, parameters=parameters
    )
    return JsonResponse(
        _with_niche(openai_api.chat_body(answer, created), answer), headers=answer.headers
    )


async def completions(caller, body):
    body = _object(body)
    model, parameters = openai_api._model(body), openai_api._parameters(body)
    prompt = openai_api._prompt(body)
    created = int(time.time())
    if model == router.AUTO_MODEL:
        return await _auto(caller, body, created, parameters, prompt=prompt)
    if body.get("stream"):
        stream = await gateway_async.generate_stream(
            caller=caller, model=model, prompt=prompt, parameters=parameters
        )
        return _streaming(stream, openai_api.completion_chunk_maker(stream, created))
    answer = await gateway_async.generate(
        caller=caller, model=model, prompt=prompt, parameters=parameters
    )
    return JsonResponse(
        _with_niche(openai_api.completion_body(answer, created), answer), headers=answer.headers
    )


def _with_niche(payload: dict, answer) -> dict:
    """A garden's answer says who answered in its body too (`niche`), as niche/auto's does."""
    if answer.target.garden is not None:
        payload["niche"] = niche_block(answer.target)
    return payload


async def _auto(caller, body, created: int, parameters, *, prompt=None, messages=None):
    """A /v1 call to "niche/auto": the body says who answered (`niche.routed_to`, its
    confidence, the runner-up and the reason), as the X-Niche-Listing header does."""
    chat = messages is not None
    stream = bool(body.get("stream"))
    answer = await gateway_async.auto_generate(
        caller=caller, prompt=prompt, messages=messages, parameters=parameters, stream=stream
    )
    if stream:
        maker = openai_api.chat_chunk_maker if chat else openai_api.completion_chunk_maker
        return _streaming(answer, maker(answer, created))
    payload = (openai_api.chat_body if chat else openai_api.completion_body)(answer, created)
    payload["niche"] = answer.target.route.as_dict()
    return JsonResponse(payload, headers=answer.headers)


def _streaming(stream: gateway_async.AsyncGatewayStream, chunk) -> StreamingHttpResponse:
    """Server-sent events, as serving.openai_api streams them; the stream is closed on
    every end (finished, failed, the client left), which cancels the generation."""

    async def lines():
        try:
            yield openai_api._sse(chunk(first=True))
            async for event in stream.events():
                if event.type == "idle":
                    yield ": keep-alive\n\n"  # an SSE comment; a gone client fails here
                elif event.type == "token":
                    yield openai_api._sse(chunk(text=event.text))
                elif event.type == "done":
                    yield openai_api._sse(chunk(finish_reason=event.finish_reason))
                    yield openai_api._sse(chunk(usage=asdict(event.usage)))
                    yield openai_api._sse("[DONE]")
                else:
                    status = 504 if event.code == "engine_timeout" else 502
                    error = openai_api.openai_error(status, event.code, event.message)
                    yield openai_api._sse(error)
        finally:
            await asyncio.shield(stream.close())

    response = StreamingHttpResponse(lines(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    for name, value in stream.headers.items():
        response[name] = value
    return response
