"""Every call Niche makes to Stripe lives here, and nowhere else.

Each function passes the API key explicitly (a `stripe.StripeClient`, never the global
`stripe.api_key`), sends every POST with an idempotency key derived from our own row id
(so a retried timeout, by the SDK or by us, never creates a second charge, session or
refund: Stripe answers the first reply again), and turns `stripe.StripeError` into
billing's typed errors. Results are billing.stripe_objects views: no other module reads
Stripe's JSON, and every field read there is checked against the pinned API version.

Nothing here is called inside a database transaction: writes go through the outbox
(billing.stripe_outbox), reads happen before the rows they decide are locked.

With no STRIPE_SECRET_KEY billing runs in sandbox mode (`sandbox_mode()`): nothing here
may be called then, and a call raises `PaymentProviderError` (code stripe_not_configured).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import stripe
from django.conf import settings

from billing.errors import (
    InvalidWebhookSignature,
    PaymentDeclined,
    PaymentProviderError,
    PaymentProviderUnavailable,
)
from billing.stripe_objects import (
    AccountLinkView,
    AccountView,
    ApplicationFeeView,
    ChargeView,
    CheckoutSessionView,
    CreatedObject,
    InvoicePaymentView,
    InvoiceView,
    MeterEventView,
    PaymentIntentView,
    RefundView,
    StripeEventView,
    SubscriptionView,
    TransferReversalView,
    TransferView,
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


def _list(call: Callable[..., Any], params: dict) -> tuple[list[dict], bool]:
    with _translated():
        page = call(params).to_dict()
    return list(page.get("data") or []), bool(page.get("has_more"))


def _all(call: Callable[..., Any], params: dict, *, limit: int = 1000) -> list[dict]:
    """Every item of a list, page by page (newest first), at most `limit`."""
    items: list[dict] = []
    cursor: str | None = None
    while len(items) < limit:
        page, more = _list(
            call, {**params, "limit": 100, **({"starting_after": cursor} if cursor else {})}
        )
        items.extend(page)
        if not more or not page:
            break
        cursor = page[-1].get("id")
    return items[:limit]


# --- Webhooks ------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedEvent:
    view: StripeEventView
    payload: dict  # the event as delivered, stored raw before it is processed


def webhook_event_verify(*, payload: bytes, signature: str | None) -> VerifiedEvent:
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
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise InvalidWebhookSignature(
                "The webhook body is not a Stripe event.", code="bad_event"
            )
        return VerifiedEvent(view=StripeEventView.parse(event), payload=event)
    raise InvalidWebhookSignature(
        f"The webhook signature does not verify: {failure.user_message or failure}."
    )


def events_list(
    *, created_after: datetime, types: list[str], limit: int = 1000
) -> list[VerifiedEvent]:
    """Stripe's events since `created_after` (Stripe keeps them 30 days), newest first:
    what the reconciler compares with the webhooks we received."""
    params: dict[str, Any] = {"created": {"gte": int(created_after.timestamp())}, "types": types}
    return [
        VerifiedEvent(view=StripeEventView.parse(raw), payload=_as_sent(raw))
        for raw in _all(_client().v1.events.list, params, limit=limit)
    ]


def _as_sent(obj: dict) -> dict:
    """An object as Stripe's JSON carried it: the SDK's to_dict() turns decimal strings
    (`unit_amount_decimal`) into Decimal, which a JSON column cannot store."""
    return json.loads(json.dumps(obj, default=str))


# --- Catalogue: products, prices, meters ---------------------------------------------


def product_create(*, offer_id: object, name: str) -> CreatedObject:
    return CreatedObject.product(
        _post(
            _client().v1.products.create,
            {"name": name, "metadata": {"niche_offer_id": str(offer_id)}},
            key=idempotency_key("product", offer_id),
        )
    )


def meter_event_name(offer_id: object) -> str:
    """One meter per per-call offer: a customer's calls on two listings never mix."""
    return f"niche_calls_{str(offer_id).replace('-', '')}"


def meter_create(*, offer_id: object) -> CreatedObject:
    return CreatedObject.meter(
        _post(
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
) -> CreatedObject:
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
    return CreatedObject.price(
        _post(_client().v1.prices.create, params, key=idempotency_key(purpose, offer_id))
    )


# --- Checkout -------------------------------------------------------------------------


def checkout_session_create(
    *,
    key: str,
    licence_id: object,
    mode: Literal["payment", "subscription"],
    line_items: list[dict],
    customer_email: str,
    success_url: str,
    cancel_url: str,
    destination_account_id: str | None,
    application_fee_amount: int | None = None,
    application_fee_percent: int | None = None,
) -> CheckoutSessionView:
    """A Checkout Session for one pending licence: a destination charge to the expert.

    `payment` mode takes `application_fee_amount`, `subscription` mode takes
    `application_fee_percent`; both name the expert's account in `transfer_data`. A
    garden's (no destination) is charged on the platform's account, and its payouts
    are separate transfers (transfer_create).
    `key` is the outbox intent's: asking twice for the same licence gets one session.
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
    destination: dict[str, Any] = {}
    if destination_account_id is not None:
        destination = {"transfer_data": {"destination": destination_account_id}}
    if mode == "payment":
        params["customer_creation"] = "always"
        params["payment_intent_data"] = {"metadata": metadata} | destination
        if destination:
            params["payment_intent_data"]["application_fee_amount"] = application_fee_amount
    else:
        params["subscription_data"] = {"metadata": metadata} | destination
        if destination:
            params["subscription_data"]["application_fee_percent"] = application_fee_percent
    return CheckoutSessionView.parse(_post(_client().v1.checkout.sessions.create, params, key=key))


def checkout_session_retrieve(session_id: str) -> CheckoutSessionView:
    return CheckoutSessionView.parse(_get(_client().v1.checkout.sessions.retrieve, session_id))


def checkout_session_expire(*, session_id: str, key: str) -> CheckoutSessionView:
    """Closes an open session so it can no longer be paid (PaymentProviderError when it
    is not open any more: the caller re-reads it)."""
    return CheckoutSessionView.parse(
        _post(
            lambda params, options: _client().v1.checkout.sessions.expire(
                session_id, params, options
            ),
            {},
            key=key,
        )
    )


# --- Connect --------------------------------------------------------------------------


def account_create(*, expert_id: object, email: str) -> AccountView:
    """An Express account for an expert (the key is the expert's: one account each)."""
    return AccountView.parse(
        _post(
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
    )


def account_retrieve(account_id: str) -> AccountView:
    return AccountView.parse(_get(_client().v1.accounts.retrieve, account_id))


def account_link_create(
    *, connect_account_id: object, account_id: str, refresh_url: str, return_url: str, nonce: str
) -> AccountLinkView:
    """A single-use onboarding link. `nonce` (e.g. the minute) lets a later request get a
    fresh link while a retried timeout of the same request gets the same one."""
    return AccountLinkView.parse(
        _post(
            _client().v1.account_links.create,
            {
                "account": account_id,
                "type": "account_onboarding",
                "refresh_url": refresh_url,
                "return_url": return_url,
            },
            key=idempotency_key("account-link", connect_account_id, nonce),
        )
    )


# --- Subscriptions and invoices -------------------------------------------------------


def subscription_retrieve(subscription_id: str) -> SubscriptionView:
    """The subscription; its items carry their price (Stripe always includes it)."""
    return SubscriptionView.parse(_get(_client().v1.subscriptions.retrieve, subscription_id))


def subscription_cancel(*, subscription_id: str, invoice_now: bool) -> SubscriptionView:
    """Ends a subscription now, without proration credit (a refund owed is issued by
    us, explicitly); `invoice_now` bills metered usage not yet invoiced. A DELETE:
    idempotent by itself (cancelling a cancelled subscription answers an error that
    the caller resolves by re-reading it)."""
    with _translated():
        return SubscriptionView.parse(
            _client()
            .v1.subscriptions.cancel(
                subscription_id,
                {"invoice_now": invoice_now, "prorate": False},
            )
            .to_dict()
        )


def subscription_set_cancel_at_period_end(
    *, subscription_id: str, cancel: bool, key: str
) -> SubscriptionView:
    """Schedule (cancel=True) or undo (False) the end of a subscription at its period's
    end: billing stops renewing, access lasts what was paid."""
    return SubscriptionView.parse(
        _post(
            lambda params, options: _client().v1.subscriptions.update(
                subscription_id, params, options
            ),
            {"cancel_at_period_end": cancel},
            key=key,
        )
    )


def subscriptions_of_customer(customer_id: str) -> list[SubscriptionView]:
    """Every subscription of a customer Stripe still bills or may bill."""
    return [
        SubscriptionView.parse(raw)
        for raw in _all(
            _client().v1.subscriptions.list,
            {"customer": customer_id, "status": "all"},
        )
    ]


def invoice_retrieve(invoice_id: str) -> InvoiceView:
    return InvoiceView.parse(
        _get(_client().v1.invoices.retrieve, invoice_id, {"expand": ["payments"]})
    )


def invoices_of_subscription(subscription_id: str) -> list[InvoiceView]:
    return [
        InvoiceView.parse(raw)
        for raw in _all(
            _client().v1.invoices.list,
            {"subscription": subscription_id, "expand": ["data.payments"]},
        )
    ]


def invoice_payments_of_payment_intent(payment_intent_id: str) -> list[InvoicePaymentView]:
    """Which invoice a payment intent paid (the pinned API has no PaymentIntent.invoice)."""
    return [
        InvoicePaymentView.parse(raw)
        for raw in _all(
            _client().v1.invoice_payments.list,
            {"payment": {"type": "payment_intent", "payment_intent": payment_intent_id}},
        )
    ]


# --- Payments, fees, transfers, refunds ------------------------------------------------


def payment_intent_retrieve(payment_intent_id: str) -> PaymentIntentView:
    return PaymentIntentView.parse(_get(_client().v1.payment_intents.retrieve, payment_intent_id))


def charge_retrieve(charge_id: str) -> ChargeView:
    """The charge, its balance transaction (Stripe's fee) and its refunds."""
    return ChargeView.parse(
        _get(
            _client().v1.charges.retrieve,
            charge_id,
            {"expand": ["balance_transaction", "refunds"]},
        )
    )


def application_fee_retrieve(fee_id: str) -> ApplicationFeeView:
    return ApplicationFeeView.parse(_get(_client().v1.application_fees.retrieve, fee_id))


def transfer_retrieve(transfer_id: str) -> TransferView:
    return TransferView.parse(_get(_client().v1.transfers.retrieve, transfer_id))


def transfer_create(
    *,
    amount: int,
    currency: str,
    destination: str,
    source_transaction: str,
    transfer_group: str,
    key: str,
    metadata: dict,
) -> TransferView:
    """A garden payout: `amount` from the platform's balance to a Connect account, tied
    to the charge that funded it (`source_transaction`, so it waits for those funds).
    `key` is the outbox intent's."""
    params: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "destination": destination,
        "transfer_group": transfer_group,
        "metadata": metadata,
    }
    if source_transaction:
        params["source_transaction"] = source_transaction
    return TransferView.parse(_post(_client().v1.transfers.create, params, key=key))


def transfer_reversal_retrieve(*, transfer_id: str, reversal_id: str) -> TransferReversalView:
    with _translated():
        return TransferReversalView.parse(
            _client().v1.transfers.reversals.retrieve(transfer_id, reversal_id).to_dict()
        )


def refund_create(
    *, charge_id: str, amount: int, key: str, metadata: dict, destination_charge: bool = True
) -> RefundView:
    """Refunds `amount` of a destination charge, taking it back from the expert's transfer
    (`reverse_transfer`) and returning the platform fee in proportion
    (`refund_application_fee`). A garden's charge (`destination_charge=False`) is the
    platform's own: its payouts are reversed one by one (transfer_reversal_create).
    `key` is the outbox intent's."""
    params: dict[str, Any] = {"charge": charge_id, "amount": amount, "metadata": metadata}
    if destination_charge:
        params |= {"reverse_transfer": True, "refund_application_fee": True}
    return RefundView.parse(_post(_client().v1.refunds.create, params, key=key))


def transfer_reversal_create(
    *, transfer_id: str, amount: int, key: str, metadata: dict
) -> TransferReversalView:
    """Takes `amount` of a garden payout back from the payee's account (a refund)."""
    return TransferReversalView.parse(
        _post(
            functools.partial(_client().v1.transfers.reversals.create, transfer_id),
            {"amount": amount, "metadata": metadata},
            key=key,
        )
    )


# --- Metered usage --------------------------------------------------------------------


def meter_event_create(
    *, event_name: str, customer_id: str, value: int, identifier: str, timestamp: int
) -> MeterEventView | None:
    """Reports `value` calls for a customer. `identifier` is ours (the period and its
    billable total): Stripe counts an identifier once, so a re-report is a no-op.
    Returns None when Stripe already had this identifier."""
    try:
        return MeterEventView.parse(
            _post(
                _client().v1.billing.meter_events.create,
                {
                    "event_name": event_name,
                    "identifier": identifier,
                    "timestamp": timestamp,
                    "payload": {"stripe_customer_id": customer_id, "value": str(value)},
                },
                key=idempotency_key("meter-event", identifier),
            )
        )
    except PaymentProviderError as exc:
        if exc.fields.get("stripe_code") == ["duplicate_meter_event"]:
            return None
        raise
