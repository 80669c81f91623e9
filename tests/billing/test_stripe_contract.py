"""The Stripe contract: Niche reads only fields the API version of the pinned SDK has.

Issue 20, defect 6: the code read `invoice.charge`, `invoice.payment_intent` and
`payment_intent.invoice`, which the pinned API version (stripe 16.1.0:
2026-10-28.endive) no longer has, so subscription payments were stored without a charge
and their refunds were lost; the tests passed only because the local server spoke an
older shape. Now:

1. every field Niche reads from a Stripe object is one literal path in
   billing/stripe_objects.py, and each exists in the SDK's typed resource classes;
2. nothing else reads Stripe's JSON: every gateway function returns one of those views;
3. the local Stripe of the tests answers the pinned shape, checked against the same
   classes, so it cannot hide a read of a dropped field (a probe that it refuses one).
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest
import stripe

from billing import stripe_gateway, stripe_objects
from tests.billing import stripe_types

OBJECTS_FILE = Path(stripe_objects.__file__)


def read_paths() -> list[tuple[int, str]]:
    """(line, path) of every `_read(obj, "<path>")` in billing/stripe_objects.py."""
    tree = ast.parse(OBJECTS_FILE.read_text())
    paths = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_read":
            argument = node.args[1]
            assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
                f"line {node.lineno}: _read takes a literal path, so this test can check it"
            )
            paths.append((node.lineno, argument.value))
    return paths


def test_the_sdk_pinned_is_the_one_this_contract_was_written_against():
    assert stripe.api_version == "2026-10-28.endive"


def test_every_field_niche_reads_exists_in_the_pinned_api_version():
    paths = read_paths()
    assert len(paths) > 80  # the whole surface: checkout, money, subscriptions, events
    missing = []
    for line, path in paths:
        try:
            stripe_types.check_path(path)
        except stripe_types.PathError as exc:
            missing.append(f"billing/stripe_objects.py:{line}: {exc}")
    assert missing == []


@pytest.mark.parametrize(
    "dropped",
    [
        "Invoice.charge",
        "Invoice.payment_intent",
        "Invoice.subscription",
        "PaymentIntent.invoice",
        "Subscription.current_period_start",
        "Subscription.current_period_end",
    ],
)
def test_the_check_refuses_the_fields_the_old_code_read(dropped):
    """The check is not vacuous: the reads behind defect 6 fail it."""
    with pytest.raises(stripe_types.PathError):
        stripe_types.check_path(dropped)


def test_no_module_reads_stripe_json_but_the_views():
    """Every gateway function hands back a view (or nothing), never Stripe's dict."""
    views = {
        obj
        for _name, obj in inspect.getmembers(stripe_objects, inspect.isclass)
        if obj.__module__ == stripe_objects.__name__
    } | {stripe_gateway.VerifiedEvent}
    leaks = []
    for name, function in inspect.getmembers(stripe_gateway, inspect.isfunction):
        if function.__module__ != stripe_gateway.__name__ or name.startswith("_"):
            continue
        returned = typing.get_type_hints(function).get("return")
        allowed = _types_in(returned)
        if not allowed or not allowed <= views | {type(None), str, bool}:
            leaks.append(f"{name} returns {returned}")
    assert leaks == []


def _types_in(annotation) -> set:
    if annotation is None:
        return set()
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    out = set()
    for arg in args:
        out |= _types_in(arg)
    return out


def test_the_local_stripe_answers_only_the_pinned_shape(stripe_server):
    """Its answers so far (this test's and every earlier one in this process) hold no
    field the pinned SDK lacks: the server checks each, and records what it refused."""
    assert stripe_server.strict_shapes is True
    assert stripe_server.shape_errors_seen == []


def test_an_old_shaped_answer_is_refused_by_the_local_stripe(stripe_server):
    """The server's own check catches a dropped field, nested or not."""
    old_invoice = {
        "id": "in_1",
        "object": "invoice",
        "charge": "ch_1",
        "lines": {"object": "list", "data": [{"id": "il_1", "object": "line_item"}]},
    }
    errors = stripe_types.shape_errors(old_invoice)
    assert errors == ["<Invoice>.charge: not in Invoice"]
    pinned = stripe_server._pin(
        {
            "id": "in_1",
            "object": "invoice",
            "charge": "ch_1",
            "payment_intent": "pi_1",
            "subscription": "sub_1",
            "status": "paid",
            "amount_paid": 100,
            "amount_due": 100,
        }
    )
    assert stripe_types.shape_errors(pinned) == []
    assert pinned["parent"]["subscription_details"]["subscription"] == "sub_1"
    assert pinned["payments"]["data"][0]["payment"]["payment_intent"] == "pi_1"
    parsed = stripe_objects.InvoiceView.parse(pinned)
    assert (parsed.subscription_id, parsed.payments[0].payment_intent_id) == ("sub_1", "pi_1")
