"""`POST /api/v1/models/{listing}/predict`: the gateway in the one error contract."""

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
    return body


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
        answer = gateway.predict(
            user=request.user,
            api_key=calling_api_key(request),
            listing_ref=listing,
            payload=request.data,
        )
        return Response(predict_body(answer), headers=answer.headers)
