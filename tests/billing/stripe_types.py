"""Stripe's object shapes at the API version the installed SDK pins, read from the SDK's
own typed resource classes (the merged `__annotations__` over each class's MRO).

Two checks use it: every field path billing/stripe_objects.py reads must exist here
(test_stripe_contract.py), and every object the local Stripe of the tests answers must
hold only fields that exist here (stripe_server.py checks each response), so a test
server that speaks an older API shape cannot hide a read of a field Stripe dropped.
"""

from __future__ import annotations

import functools
import typing

import stripe
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject

# Keys every object may carry whatever its class declares.
ALWAYS_ALLOWED = {"object", "id"}


def annotations(cls: type) -> dict[str, object]:
    merged: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        merged.update(getattr(klass, "__annotations__", {}))
    return {k: v for k, v in merged.items() if not k.startswith("_") and k != "OBJECT_NAME"}


def resource_class(dotted: str) -> type:
    """ "Invoice" → stripe.Invoice; "checkout.Session" → stripe.checkout.Session."""
    target: object = stripe
    for part in dotted.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, StripeObject)):
        raise LookupError(f"stripe.{dotted} is not a resource class")
    return target


def _resolve_forward(name: str) -> type | None:
    for namespace in (stripe, stripe.checkout, stripe.billing):
        found = getattr(namespace, name, None)
        if isinstance(found, type):
            return found
    return None


def _candidates(annotation: object) -> list[tuple[str, type | None]]:
    """What an annotation may hold, as (shape, class): ("object", cls), ("list", item
    class), ("dict", None) for free-form maps, ("scalar", None) otherwise."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        out = []
        for arg in typing.get_args(annotation):
            out.extend(_candidates(arg))
        return out
    if origin is ListObject:
        (item,) = typing.get_args(annotation) or (None,)
        return [("list", _class_of(item))]
    if origin in (list, typing.List, tuple):  # noqa: UP006
        args = typing.get_args(annotation)
        return [("array", _class_of(args[0]) if args else None)]
    if origin in (dict, typing.Dict, typing.Mapping) or (  # noqa: UP006
        isinstance(origin, type) and issubclass(origin, StripeObject)
    ):
        return [("dict", None)]
    cls = _class_of(annotation)
    if cls is not None:
        return [("object", cls)]
    return [("scalar", None)]


def _class_of(annotation: object) -> type | None:
    if isinstance(annotation, typing.ForwardRef):
        return _resolve_forward(annotation.__forward_arg__)
    if isinstance(annotation, str):
        return _resolve_forward(annotation)
    if isinstance(annotation, type) and issubclass(annotation, StripeObject):
        return annotation
    return None


class PathError(LookupError):
    pass


def check_path(path: str) -> None:
    """Raise PathError unless `path` ("Invoice.status_transitions.paid_at", "Charge.
    refunds[]", "checkout.Session.id") names fields the pinned SDK declares."""
    head, _, rest = path.partition(".")
    if head in ("checkout", "billing"):
        second, _, rest = rest.partition(".")
        head = f"{head}.{second}"
    try:
        cls: type | None = resource_class(head)
    except (AttributeError, LookupError) as exc:
        raise PathError(f"{path}: no resource class stripe.{head}") from exc
    steps = rest.split(".")
    for index, raw_step in enumerate(steps):
        step = raw_step.removesuffix("[]")
        fields = annotations(cls)
        if step not in fields:
            raise PathError(f"{path}: {cls.__qualname__} has no field {step!r}")
        if index == len(steps) - 1:
            return
        options = _candidates(fields[step])
        if raw_step.endswith("[]"):
            nexts = [c for shape, c in options if shape in ("list", "array") and c]
        else:
            nexts = [c for shape, c in options if shape == "object" and c]
            if not nexts and any(shape == "dict" for shape, _ in options):
                return  # a free-form map (metadata, data.object): keys are not typed
        if not nexts:
            raise PathError(f"{path}: {cls.__qualname__}.{step} holds no object to step into")
        cls = nexts[0]


@functools.cache
def class_for_object_name(name: str) -> type | None:
    """The resource class of an object's `object` field ("invoice" → stripe.Invoice)."""
    from stripe._object_classes import OBJECT_CLASSES, get_object_class

    if name not in OBJECT_CLASSES:
        return None
    return get_object_class("V1", name)


def shape_errors(obj: object, cls: type | None = None, where: str = "") -> list[str]:
    """Fields of `obj` (a JSON object as a server answered it) that the pinned SDK's
    class does not declare, recursively: [] when it speaks the pinned shape."""
    if isinstance(obj, list):
        errors = []
        for index, item in enumerate(obj):
            errors += shape_errors(item, cls, f"{where}[{index}]")
        return errors
    if not isinstance(obj, dict):
        return []
    name = obj.get("object")
    if name == "list":
        return shape_errors(obj.get("data") or [], cls, f"{where}.data")
    if isinstance(name, str):
        cls = class_for_object_name(name) or cls
        if cls is None:
            return [f"{where or '<root>'}: unknown object type {name!r}"]
    if cls is None:
        return []
    fields = annotations(cls)
    errors = []
    for key, value in obj.items():
        if key in ALWAYS_ALLOWED:
            continue
        if key not in fields:
            errors.append(
                f"{where or '<' + cls.__qualname__ + '>'}.{key}: not in {cls.__qualname__}"
            )
            continue
        nested = [c for shape, c in _candidates(fields[key]) if c is not None]
        if isinstance(value, dict | list) and nested:
            errors += shape_errors(value, nested[0], f"{where}.{key}")
    return errors
