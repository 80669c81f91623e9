"""Every call Niche makes to Stripe lives here, and nowhere else.

Each function passes the API key explicitly (a `stripe.StripeClient`, never the global
`stripe.api_key`), sends every POST with an idempotency key derived from our own row id
(so a retried timeout, by the SDK or by us, never creates a second charge, session or
refund: Stripe answers the first reply again), and turns `stripe.StripeError` into
billing's typed errors. Results are plain dicts, as Stripe's JSON reads.

With no STRIPE_SECRET_KEY billing runs in sandbox mode (`sandbox_mode()`): nothing here
may be called then, and a call raises `PaymentProviderError` (code stripe_not_configured).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import stripe
from django.conf import settings

from billing.errors import (
    InvalidWebhookSignature,
    PaymentDeclined,
    PaymentProviderError,
    PaymentProviderUnavailable,
)

# The SDK retries a failed connection or a 5xx this many times, with the same key.
NETWORK_RETRIES = 2


def sandbox_mode() -> bool:
    """True when no Stripe key is configured: purchases complete in a labelled sandbox."""
    return not settings.STRIPE_SECRET_KEY


def idempotency_key(purpose: str, *row_ids: object) -> str:
    """`niche:<purpose>:<our row id>[:…]`: the same operation on the same row, the same key."""
    return ":".join(["niche", purpose, *(str(part) for part in row_ids)])


@functools.lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str) -> stripe.StripeClient:
    base_addresses = {"api": api_base, "meter_events": api_base} if api_base else None
    return stripe.StripeClient(
        api_key, base_addresses=base_addresses, max_network_retries=NETWORK_RETRIES
    )


def _client() -> stripe.StripeClient:
    if sandbox_mode():
        raise PaymentProviderError(
            "Stripe is not configured: billing runs in sandbox mode.",
            code="stripe_not_configured",
        )
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


@contextmanager
def _translated() -> Iterator[None]:
    """StripeError → our typed errors, with Stripe's code and parameter in `fields`."""
    try:
        yield
    except stripe.StripeError as exc:
        # The contract's shape: {name: [details]}.
        fields = {"stripe_code": [exc.code or ""], "stripe_request_id": [exc.request_id or ""]}
        param = getattr(exc, "param", None)
        if param:
            fields["param"] = [param]
        message = exc.user_message or str(exc) or type(exc).__name__
        if isinstance(exc, stripe.CardError):
            raise PaymentDeclined(message, fields=fields) from exc
        if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError | stripe.APIError):
            raise PaymentProviderUnavailable(
                "Stripe is unreachable just now; try again shortly.", fields=fields
            ) from exc
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            raise PaymentProviderError(
                "Stripe refused our credentials.", code="stripe_misconfigured", fields=fields
            ) from exc
        if isinstance(exc, stripe.IdempotencyError):
            raise PaymentProviderError(
                message, code="stripe_idempotency_conflict", fields=fields
            ) from exc
        raise PaymentProviderError(f"Stripe refused the request: {message}", fields=fields) from exc


def _post(call: Callable[..., Any], params: dict, *, key: str) -> dict:
    with _translated():
        return call(params, {"idempotency_key": key}).to_dict()


def _get(call: Callable[..., Any], object_id: str, params: dict | None = None) -> dict:
    with _translated():
        return call(object_id, params or {}).to_dict()


# --- Webhooks ------------------------------------------------------------------------


def webhook_event_verify(*, payload: bytes, signature: str | None) -> dict:
    """The event in a webhook body, once its Stripe-Signature verifies (default tolerance).

    Tries the account endpoint's secret, then the Connect endpoint's. Raises
    InvalidWebhookSignature for a missing, wrong or stale signature, or when no secret
    is configured (sandbox mode receives no webhooks).
    """
    secrets = [
        s for s in (settings.STRIPE_WEBHOOK_SECRET, settings.STRIPE_CONNECT_WEBHOOK_SECRET) if s
    ]
    if not secrets:
        raise InvalidWebhookSignature("No webhook signing secret is configured.")
    if not signature:
        raise InvalidWebhookSignature("The Stripe-Signature header is missing.")
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(payload, signature, secret)
        except stripe.SignatureVerificationError as exc:
            failure = exc
            continue
        except ValueError as exc:  # the body is not JSON
            raise InvalidWebhookSignature("The webhook body is not a JSON event.") from exc
        return json.loads(payload)
    raise InvalidWebhookSignature(
        f"The webhook signature does not verify: {failure.user_message or failure}."
    )


# --- Catalogue: products, prices, meters ---------------------------------------------


def product_create(*, offer_id: object, name: str) -> dict:
    return _post(
        _client().v1.products.create,
        {"name": name, "metadata": {"niche_offer_id": str(offer_id)}},
        key=idempotency_key("product", offer_id),
    )


def meter_event_name(offer_id: object) -> str:
    """One meter per per-call offer: a customer's calls on two listings never mix."""
    return f"niche_calls_{str(offer_id).replace('-', '')}"


def meter_create(*, offer_id: object) -> dict:
    return _post(
        _client().v1.billing.meters.create,
        {
            "display_name": f"Niche calls ({offer_id})",
            "event_name": meter_event_name(offer_id),
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        },
        key=idempotency_key("meter", offer_id),
    )


def price_create(
    *,
    offer_id: object,
    product_id: str,
    currency: str,
    unit_amount: int | None = None,
    unit_amount_decimal: str | None = None,
    recurring: Literal["licensed", "metered"] | None = None,
    meter_id: str | None = None,
    purpose: str = "price",
) -> dict:
    """A one-time price (recurring=None), a monthly one, or a monthly metered one."""
    params: dict[str, Any] = {
        "product": product_id,
        "currency": currency,
        "metadata": {"niche_offer_id": str(offer_id)},
    }
    if unit_amount_decimal is not None:
        params["unit_amount_decimal"] = unit_amount_decimal
    else:
        params["unit_amount"] = unit_amount
    if recurring is not None:
        params["recurring"] = {"interval": "month", "usage_type": recurring}
        if recurring == "metered":
            params["recurring"]["meter"] = meter_id
    return _post(_client().v1.prices.create, params, key=idempotency_key(purpose, offer_id))


# --- Checkout -------------------------------------------------------------------------


def checkout_session_create(
    *,
    licence_id: object,
    mode: Literal["payment", "subscription"],
    line_items: list[dict],
    customer_email: str,
    success_url: str,
    cancel_url: str,
    destination_account_id: str,
    application_fee_amount: int | None = None,
    application_fee_percent: int | None = None,
) -> dict:
    """A Checkout Session for one pending licence: a destination charge to the expert.

    `payment` mode takes `application_fee_amount`, `subscription` mode takes
    `application_fee_percent`; both name the expert's account in `transfer_data`.
    The key is the licence's: asking twice for the same licence gets the same session.
    """
    metadata = {"niche_licence_id": str(licence_id)}
    params: dict[str, Any] = {
        "mode": mode,
        "line_items": line_items,
        "client_reference_id": str(licence_id),
        "customer_email": customer_email,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "metadata": metadata,
    }
    transfer_data = {"destination": destination_account_id}
    if mode == "payment":
        params["customer_creation"] = "always"
        params["payment_intent_data"] = {
            "application_fee_amount": application_fee_amount,
            "transfer_data": transfer_data,
            "metadata": metadata,
        }
    else:
        params["subscription_data"] = {
            "application_fee_percent": application_fee_percent,
            "transfer_data": transfer_data,
            "metadata": metadata,
        }
    return _post(
        _client().v1.checkout.sessions.create,
        params,
        key=idempotency_key("checkout-session", licence_id),
    )


def checkout_session_retrieve(session_id: str) -> dict:
    return _get(_client().v1.checkout.sessions.retrieve, session_id)


def checkout_session_expire(*, licence_id: object, session_id: str) -> dict:
    """Closes an open session so it can no longer be paid."""
    return _post(
        lambda params, options: _client().v1.checkout.sessions.expire(session_id, params, options),
        {},
        key=idempotency_key("checkout-session-expire", licence_id),
    )


# --- Connect --------------------------------------------------------------------------


def account_create(*, expert_id: object, email: str) -> dict:
    """An Express account for an expert (the key is the expert's: one account each)."""
    return _post(
        _client().v1.accounts.create,
        {
            "type": "express",
            "email": email,
            "capabilities": {
                "card_payments": {"requested": True},
                "transfers": {"requested": True},
            },
            "metadata": {"niche_user_id": str(expert_id)},
        },
        key=idempotency_key("connect-account", expert_id),
    )


def account_retrieve(account_id: str) -> dict:
    return _get(_client().v1.accounts.retrieve, account_id)


def account_link_create(
    *, connect_account_id: object, account_id: str, refresh_url: str, return_url: str, nonce: str
) -> dict:
    """A single-use onboarding link. `nonce` (e.g. the minute) lets a later request get a
    fresh link while a retried timeout of the same request gets the same one."""
    return _post(
        _client().v1.account_links.create,
        {
            "account": account_id,
            "type": "account_onboarding",
            "refresh_url": refresh_url,
            "return_url": return_url,
        },
        key=idempotency_key("account-link", connect_account_id, nonce),
    )


# --- Payments, subscriptions, refunds -------------------------------------------------


def subscription_retrieve(subscription_id: str) -> dict:
    return _get(_client().v1.subscriptions.retrieve, subscription_id)


def subscription_cancel(subscription_id: str) -> dict:
    """Ends a subscription now (a DELETE: idempotent by itself)."""
    with _translated():
        return _client().v1.subscriptions.cancel(subscription_id).to_dict()


def invoice_retrieve(invoice_id: str) -> dict:
    return _get(_client().v1.invoices.retrieve, invoice_id)


def payment_intent_retrieve(payment_intent_id: str) -> dict:
    return _get(_client().v1.payment_intents.retrieve, payment_intent_id)


def charge_retrieve(charge_id: str) -> dict:
    return _get(_client().v1.charges.retrieve, charge_id)


def refund_create(
    *,
    payment_id: object,
    refunded_before: int,
    amount: int,
    charge_id: str,
    reason: str,
) -> dict:
    """Refunds `amount` of a destination charge, taking it back from the expert's transfer
    and returning the platform fee in proportion. Keyed by the payment and what was
    refunded before, so a retry repeats this refund and a later one is a new refund."""
    return _post(
        _client().v1.refunds.create,
        {
            "charge": charge_id,
            "amount": amount,
            "reverse_transfer": True,
            "refund_application_fee": True,
            "metadata": {"niche_payment_id": str(payment_id), "reason": reason[:500]},
        },
        key=idempotency_key("refund", payment_id, refunded_before, amount),
    )


# --- Metered usage --------------------------------------------------------------------


def meter_event_create(
    *, event_name: str, customer_id: str, value: int, identifier: str, timestamp: int
) -> dict | None:
    """Reports `value` calls for a customer. `identifier` is ours (licence, period and
    the running total): Stripe counts an identifier once, so a re-report is a no-op.
    Returns None when Stripe already had this identifier."""
    try:
        return _post(
            _client().v1.billing.meter_events.create,
            {
                "event_name": event_name,
                "identifier": identifier,
                "timestamp": timestamp,
                "payload": {"stripe_customer_id": customer_id, "value": str(value)},
            },
            key=idempotency_key("meter-event", identifier),
        )
    except PaymentProviderError as exc:
        if exc.fields.get("stripe_code") == ["duplicate_meter_event"]:
            return None
        raise
