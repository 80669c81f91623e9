"""`POST /api/v1/models/{listing}/predict`: the gateway in the one error contract."""

import json
from dataclasses import asdict

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from accounts.authentication import calling_api_key
from marketplace.api import BaseApi
from serving import gateway, protocol


def predict_body(answer: gateway.GatewayAnswer) -> dict:
    result = answer.result
    body = {"id": answer.request_id, "model": answer.target.model_name}
    if answer.target.task == protocol.TEXT_CLASSIFICATION:
        body["predictions"] = [{"label": o.label, "scores": o.scores} for o in result.outputs]
    else:
        body["generated_text"] = result.outputs.text
        body["finish_reason"] = result.outputs.finish_reason
    body["usage"] = asdict(result.usage)  # prompt_tokens, completion_tokens, total_tokens
    body["latency_ms"] = answer.latency_ms
    if answer.target.route is not None:  # niche/auto or a garden: who answered, and why
        body["niche"] = niche_block(answer.target)
    return body


def niche_block(target: gateway.Target) -> dict:
    """Who answered a routed call and why; for a garden, also the garden."""
    block = target.route.as_dict()
    if target.garden is not None:
        block["garden"] = target.garden.plan.slug
    return block


class PredictApi(BaseApi):
    """Classification `{"inputs": ["text", ...]}` → each input's label and every label's
    score; generation `{"inputs": "prompt", "parameters": {...}}` → the generated text.
    `listing` is the slug (its live version) or `slug@<version number>`."""

    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="models_predict",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Call a licensed listing (headers X-Niche-Listing, -Version, -Adapter-SHA256).",
    )
    def post(self, request, listing: str):
        try:
            answer = gateway.predict(
                user=request.user,
                api_key=calling_api_key(request),
                listing_ref=listing,
                payload=request.data,
            )
        except gateway.GardenOnTheEventLoop:
            return _on_the_event_loop("predict", request, listing=listing)
        return Response(predict_body(answer), headers=answer.headers)


def _caller(request):
    """The gateway_async caller of a synchronous (WSGI) request: no access cache."""
    from serving.gateway_async import Caller

    key = calling_api_key(request)
    return Caller(
        user_id=request.user.pk,
        key_id=key.pk if key is not None else None,
        key_rate_limit=key.rate_limit_per_minute if key is not None else None,
    )


def _on_the_event_loop(handler: str, request, **kwargs) -> Response:
    """A synchronous (WSGI) request served by serving.async_apis' handler, run to its end."""
    from asgiref.sync import async_to_sync

    from serving import async_apis

    response = async_to_sync(getattr(async_apis, handler))(_caller(request), request.data, **kwargs)
    headers = {k: v for k, v in response.items() if k.startswith("X-Niche-")}
    return Response(json.loads(response.content), headers=headers)


class AutoPredictApi(BaseApi):
    """`model` "niche/auto": the specialist router picks who answers each input (the
    verified specialist you may call that is likeliest to beat the generalist, else the
    generalist fallback). Classification `{"inputs": [...], "labels"?: [...]}`, generation
    `{"inputs": "prompt", "parameters"?: {...}}`; the answer's `niche` says who answered."""

    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="models_auto_predict",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Call niche/auto: routed to the best specialist you may call, or the generalist.",
    )
    def post(self, request):
        return _on_the_event_loop("auto_predict", request)


class RouteApi(BaseApi):
    """Only decides: `{"task", "inputs": [...], "labels"?: [...], "garden"?: slug}` → for
    each input the listing that would answer (or "niche/generalist"), its calibrated
    confidence, the runner-up and the reason; plus the candidates and those skipped, with
    why. With `garden` (a router garden you may call), among its members. Nothing is run
    or billed."""

    required_scopes = {"POST": "infer"}

    @extend_schema(
        operation_id="route",
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Which specialist (or the generalist) would answer each input.",
    )
    def post(self, request):
        return _on_the_event_loop("route", request)
