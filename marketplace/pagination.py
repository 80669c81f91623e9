"""Cursor pages in OpenAI's shape: `{data, has_more, first_id, last_id}`.

Rows come newest first, ordered by (created_at, id); `?after=<id>` continues after
the row with that id and `?limit=` (1 to 100, default 20) sets the page size. A cursor
that is an id keeps pages stable while new rows arrive.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from marketplace.errors import InvalidInputError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _parse_limit(raw: str | None) -> int:
    if raw in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(
            f"limit must be a whole number from 1 to {MAX_LIMIT}.",
            fields={"limit": [f"Expected 1 to {MAX_LIMIT}."]},
        )
    return limit


def list_body(data: list, *, has_more: bool = False, **extra) -> dict:
    """Every list response: `{data, has_more, first_id, last_id}` (+ extras)."""
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        **extra,
    }


class CursorIdPagination(BasePagination):
    ordering = ("-created_at", "-id")

    def paginate_queryset(self, queryset: QuerySet, request, view=None):
        limit = _parse_limit(request.query_params.get("limit"))
        queryset = queryset.order_by(*self.ordering)
        after = request.query_params.get("after")
        if after:
            try:
                anchor = queryset.filter(pk=after).values("created_at", "id").first()
            except (DjangoValidationError, ValueError):
                anchor = None
            if anchor is None:
                raise InvalidInputError(
                    "after must be the id of an object in this list.",
                    fields={"after": ["Unknown id."]},
                )
            queryset = queryset.filter(
                Q(created_at__lt=anchor["created_at"])
                | Q(created_at=anchor["created_at"], id__lt=anchor["id"])
            )
        rows = list(queryset[: limit + 1])
        self.has_more = len(rows) > limit
        return rows[:limit]

    def get_paginated_response(self, data):
        return Response(list_body(data, has_more=self.has_more))

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["data", "has_more", "first_id", "last_id"],
            "properties": {
                "data": schema,
                "has_more": {"type": "boolean"},
                "first_id": {"type": "string", "nullable": True},
                "last_id": {"type": "string", "nullable": True},
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
        ]


def list_schema(item, *, name: str = "", cursor: bool = True, **extra):
    """The OpenAPI body of a list response: `{data: [item], has_more, first_id, last_id}`
    plus `extra` fields (serializer fields); `cursor=False` for a bare `{data}`."""
    from drf_spectacular.utils import inline_serializer
    from rest_framework import serializers

    item_class = item if isinstance(item, type) else type(item)
    fields = {"data": item_class(many=True)}
    if cursor:
        fields |= {
            "has_more": serializers.BooleanField(),
            "first_id": serializers.JSONField(allow_null=True),
            "last_id": serializers.JSONField(allow_null=True),
        }
    serializer = inline_serializer(name=name or f"{item_class.__name__}List", fields=fields | extra)
    serializer.is_list_body = True  # marketplace.schema.AutoSchema names the operation _list
    return serializer
