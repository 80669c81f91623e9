"""OpenAPI: declare the error responses every operation can give, in the one error shape.

A drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]).
Views declare their success bodies; the errors follow from what the operation is, so
they are added here once instead of on 51 views: 401 always (a key that is not valid),
403 unless the operation is public, 404 when the path, body or a filter names an object,
400/411/413/415/422 when it takes a body, 422 for query parameters, 409 for a change,
and for the inference calls 429 and the engine's 502/503/504.
/api/ errors are `Error` ({"error": {code, message, fields}});
/v1/ errors are `OpenAiError` ({"error": {message, type, param, code}}).
Tests: tests/hardening/test_api_fuzz.py fuzzes every operation against this schema.
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, with list operations named `…_list` when their body is a
    `marketplace.pagination.list_schema` envelope (an object, so not seen as a list)."""

    def get_operation_id(self) -> str:
        operation_id = super().get_operation_id()
        response = self.get_response_serializers()
        if self.method == "GET" and getattr(response, "is_list_body", False):
            return operation_id.removesuffix("_retrieve") + "_list"
        return operation_id


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
            },
        }
    },
}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
DESCRIPTIONS = {
    "400": "Malformed request (unparseable body).",
    "401": "No credentials, or credentials that are not valid (revoked, suspended user).",
    "403": "Signed in, but not allowed: the key lacks the scope, or the object is not yours.",
    "404": "No such object, or one you may not see.",
    "405": "Method not allowed.",
    "409": "The object is in a state that does not allow this.",
    "411": "A body of unknown length.",
    "413": "The body is too large.",
    "415": "Unsupported content type.",
    "422": "Invalid fields (details per field).",
    "429": "Rate limited or over quota; see Retry-After.",
    "502": "The inference engine failed.",
    "503": "A service the call needs is unreachable (no inference worker running, the rate "
    "limiter's store, the mail server); try again shortly.",
    "504": "The inference engine did not answer in time.",
}
# Errors that follow from what one operation does rather than from its shape.
SPECIFIC = {
    # The version's stored files are refused (not safetensors, tampered) or missing.
    ("/api/v1/models/{version_id}/export", "get"): {"409"},
    # A new link is throttled per user, and needs Redis and the mail server.
    ("/api/v1/me/verify-email/resend", "post"): {"429", "503"},
}
# OpenAPI links: what a created object's id leads to (clients and stateful fuzzing follow
# them). (source path, method, status) -> {link name: (target path, method, parameters)}.
LINKS = {
    ("/api/v1/api_keys", "post", "201"): {
        "RevokeKey": ("/api/v1/api_keys/{key_id}", "delete", {"key_id": "$response.body#/id"}),
    },
    ("/api/v1/datasets", "post", "202"): {
        "GetDataset": (
            "/api/v1/datasets/{dataset_id}", "get", {"dataset_id": "$response.body#/id"}
        ),
        "DeleteDataset": (
            "/api/v1/datasets/{dataset_id}", "delete", {"dataset_id": "$response.body#/id"}
        ),
    },
    ("/api/v1/fine_tuning/jobs", "post", "201"): {
        "GetJob": ("/api/v1/fine_tuning/jobs/{job_id}", "get", {"job_id": "$response.body#/id"}),
        "CancelJob": (
            "/api/v1/fine_tuning/jobs/{job_id}/cancel", "post", {"job_id": "$response.body#/id"}
        ),
        "JobEvents": (
            "/api/v1/fine_tuning/jobs/{job_id}/events", "get", {"job_id": "$response.body#/id"}
        ),
    },
    ("/api/v1/listings", "post", "201"): {
        "GetListing": ("/api/v1/listings/{slug}", "get", {"slug": "$response.body#/slug"}),
        "UpdateListing": ("/api/v1/listings/{slug}", "patch", {"slug": "$response.body#/slug"}),
        "SubmitListing": (
            "/api/v1/listings/{slug}/submit", "post", {"slug": "$response.body#/slug"}
        ),
    },
    ("/api/v1/billing/offers", "post", "201"): {
        "GetOffer": (
            "/api/v1/billing/offers/{offer_id}", "get", {"offer_id": "$response.body#/id"}
        ),
        "UpdateOffer": (
            "/api/v1/billing/offers/{offer_id}", "patch", {"offer_id": "$response.body#/id"}
        ),
        "RetireOffer": (
            "/api/v1/billing/offers/{offer_id}", "delete", {"offer_id": "$response.body#/id"}
        ),
    },
}  # fmt: skip
_BODY_METHODS = {"post", "put", "patch"}
_METHODS = _BODY_METHODS | {"get", "delete"}


def _statuses(path: str, method: str, operation: dict) -> set[str]:
    # 401 always: a key that is not valid (revoked, its user suspended), even where public.
    statuses = {"401"} | SPECIFIC.get((path, method), set())
    if {} not in operation.get("security", [{}]):
        statuses.add("403")
    if "{" in path:
        statuses.add("404")
    if method in _BODY_METHODS:  # the body may name an object that is not there
        statuses |= {"400", "404", "409", "411", "413", "415", "422"}
    elif method == "delete":
        statuses.add("409")
    if any(p.get("in") == "query" for p in operation.get("parameters", [])):
        statuses |= {"404", "422"}  # a filter may name an object that is not there
    if path.endswith("/predict") or (path.startswith("/v1/") and method == "post"):
        statuses |= {"429", "502", "503", "504"}
    return statuses


def declare_error_responses(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR
    components["OpenAiError"] = OPENAI_ERROR
    for path, item in result.get("paths", {}).items():
        ref = "#/components/schemas/" + ("OpenAiError" if path.startswith("/v1/") else "Error")
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(_statuses(path, method, operation)):
                responses.setdefault(
                    status,
                    {
                        "description": DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": {"$ref": ref}}},
                    },
                )
    _add_links(result)
    return result


def _add_links(result) -> None:
    paths = result.get("paths", {})
    for (path, method, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue  # the operation changed: tests/hardening/test_api_fuzz.py notices
        response["links"] = {
            name: {"operationId": paths[target][target_method]["operationId"],
                   "parameters": parameters}
            for name, (target, target_method, parameters) in links.items()
        }  # fmt: skip
