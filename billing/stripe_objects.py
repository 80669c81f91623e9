"""Stripe's objects as Niche reads them: every field, at the API version the SDK pins.

The gateway (billing/stripe_gateway.py) returns these frozen views, never Stripe's raw
JSON, so no other module can read a field that is not declared here. Each field is read
with `_read(obj, "<Type>.<path>")`, the literal path naming the SDK's resource class
and the attribute chain (`[]` steps into a list's items). tests/billing/
test_stripe_contract.py reads every such literal in this file and checks it against
the pinned `stripe` package's typed resource classes, so a field that the pinned API
version no longer has (`Invoice.charge`, `Invoice.payment_intent`,
`PaymentIntent.invoice`, `Subscription.current_period_start`, ...) fails a test instead
of reading None in production. The local Stripe of the tests is checked against the
same classes (tests/billing/stripe_server.py), so it cannot hide such a read either.

Expandable fields (an id, or the object when expanded) are read with `_id()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def _read(obj: dict | None, path: str) -> Any:
    """The value at `path` ("Invoice.status_transitions.paid_at") of a Stripe JSON
    object, or None where a step is missing or null. The first segment names the
    resource class (for the contract test); the rest is walked."""
    _type, _, rest = path.partition(".")
    if _type in ("checkout", "billing"):  # a namespaced class: checkout.Session, ...
        _type, _, rest = rest.partition(".")
    value: Any = obj
    for step in rest.split("."):
        if not isinstance(value, dict):
            return None
        if step.endswith("[]"):
            listed = value.get(step[:-2])
            if isinstance(listed, dict):  # a list object: {"object": "list", "data": [...]}
                listed = listed.get("data")
            return [item for item in listed or [] if isinstance(item, dict)]
        value = value.get(step)
    return value


def _id(value: Any) -> str | None:
    """An expandable field: its id, whether Stripe sent the id or the object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _obj(value: Any) -> dict | None:
    """An expandable field's object, when Stripe sent it expanded."""
    return value if isinstance(value, dict) else None


def _when(timestamp: Any) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if isinstance(timestamp, int) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _metadata(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class StripeEventView:
    id: str
    type: str
    created: datetime | None
    account: str | None  # a Connect account's event
    object_id: str | None  # data.object.id: the object the event is about
    object_type: str | None

    @classmethod
    def parse(cls, obj: dict) -> StripeEventView:
        data_object = _read(obj, "Event.data.object")
        return cls(
            id=_read(obj, "Event.id") or "",
            type=_read(obj, "Event.type") or "",
            created=_when(_read(obj, "Event.created")),
            account=_read(obj, "Event.account"),
            object_id=_id(data_object),
            object_type=data_object.get("object") if isinstance(data_object, dict) else None,
        )


# --- catalogue objects ----------------------------------------------------------------


@dataclass(frozen=True)
class CreatedObject:
    """A product, price or meter we created: we keep its id."""

    id: str

    @classmethod
    def product(cls, obj: dict) -> CreatedObject:
        return cls(id=_read(obj, "Product.id"))

    @classmethod
    def price(cls, obj: dict) -> CreatedObject:
        return cls(id=_read(obj, "Price.id"))

    @classmethod
    def meter(cls, obj: dict) -> CreatedObject:
        return cls(id=_read(obj, "billing.Meter.id"))


@dataclass(frozen=True)
class MeterEventView:
    identifier: str

    @classmethod
    def parse(cls, obj: dict) -> MeterEventView:
        return cls(identifier=_read(obj, "billing.MeterEvent.identifier") or "")


# --- Connect --------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountView:
    id: str
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool

    @classmethod
    def parse(cls, obj: dict) -> AccountView:
        return cls(
            id=_read(obj, "Account.id"),
            charges_enabled=bool(_read(obj, "Account.charges_enabled")),
            payouts_enabled=bool(_read(obj, "Account.payouts_enabled")),
            details_submitted=bool(_read(obj, "Account.details_submitted")),
        )


@dataclass(frozen=True)
class AccountLinkView:
    url: str

    @classmethod
    def parse(cls, obj: dict) -> AccountLinkView:
        return cls(url=_read(obj, "AccountLink.url"))


# --- checkout -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutSessionView:
    id: str
    status: str | None  # open | complete | expired
    mode: str | None  # payment | subscription
    url: str | None
    client_reference_id: str | None
    payment_intent_id: str | None
    subscription_id: str | None
    customer_id: str | None
    metadata: dict[str, str]
    created: datetime | None

    @property
    def licence_id(self) -> str | None:
        return self.client_reference_id or self.metadata.get("niche_licence_id")

    @classmethod
    def parse(cls, obj: dict) -> CheckoutSessionView:
        return cls(
            id=_read(obj, "checkout.Session.id"),
            status=_read(obj, "checkout.Session.status"),
            mode=_read(obj, "checkout.Session.mode"),
            url=_read(obj, "checkout.Session.url"),
            client_reference_id=_read(obj, "checkout.Session.client_reference_id"),
            payment_intent_id=_id(_read(obj, "checkout.Session.payment_intent")),
            subscription_id=_id(_read(obj, "checkout.Session.subscription")),
            customer_id=_id(_read(obj, "checkout.Session.customer")),
            metadata=_metadata(_read(obj, "checkout.Session.metadata")),
            created=_when(_read(obj, "checkout.Session.created")),
        )


# --- money: payment intents, charges, refunds, fees, transfers --------------------------


@dataclass(frozen=True)
class RefundView:
    id: str
    amount: int
    currency: str
    status: str | None  # pending | requires_action | succeeded | failed | canceled
    created: datetime | None
    charge_id: str | None
    transfer_reversal_id: str | None
    metadata: dict[str, str]

    @property
    def counts(self) -> bool:
        """Money that went (or is going) back: a failed or cancelled refund does not."""
        return self.status in (None, "succeeded", "pending", "requires_action")

    @classmethod
    def parse(cls, obj: dict) -> RefundView:
        return cls(
            id=_read(obj, "Refund.id"),
            amount=_int(_read(obj, "Refund.amount")),
            currency=_read(obj, "Refund.currency") or "",
            status=_read(obj, "Refund.status"),
            created=_when(_read(obj, "Refund.created")),
            charge_id=_id(_read(obj, "Refund.charge")),
            transfer_reversal_id=_id(_read(obj, "Refund.transfer_reversal")),
            metadata=_metadata(_read(obj, "Refund.metadata")),
        )


@dataclass(frozen=True)
class ChargeView:
    id: str
    amount: int
    amount_refunded: int
    currency: str
    status: str | None  # succeeded | pending | failed
    created: datetime | None
    payment_intent_id: str | None
    application_fee_id: str | None
    application_fee_amount: int | None
    transfer_id: str | None
    stripe_fee: int | None  # from the expanded balance transaction
    refunds: tuple[RefundView, ...]
    metadata: dict[str, str]

    @classmethod
    def parse(cls, obj: dict) -> ChargeView:
        balance = _obj(_read(obj, "Charge.balance_transaction"))
        fee = _read(balance, "BalanceTransaction.fee") if balance else None
        return cls(
            id=_read(obj, "Charge.id"),
            amount=_int(_read(obj, "Charge.amount")),
            amount_refunded=_int(_read(obj, "Charge.amount_refunded")),
            currency=_read(obj, "Charge.currency") or "",
            status=_read(obj, "Charge.status"),
            created=_when(_read(obj, "Charge.created")),
            payment_intent_id=_id(_read(obj, "Charge.payment_intent")),
            application_fee_id=_id(_read(obj, "Charge.application_fee")),
            application_fee_amount=_read(obj, "Charge.application_fee_amount"),
            transfer_id=_id(_read(obj, "Charge.transfer")),
            stripe_fee=fee if isinstance(fee, int) else None,
            refunds=tuple(RefundView.parse(r) for r in _read(obj, "Charge.refunds[]")),
            metadata=_metadata(_read(obj, "Charge.metadata")),
        )


@dataclass(frozen=True)
class PaymentIntentView:
    id: str
    status: str | None
    amount: int
    currency: str
    customer_id: str | None
    latest_charge_id: str | None
    metadata: dict[str, str]

    @classmethod
    def parse(cls, obj: dict) -> PaymentIntentView:
        return cls(
            id=_read(obj, "PaymentIntent.id"),
            status=_read(obj, "PaymentIntent.status"),
            amount=_int(_read(obj, "PaymentIntent.amount")),
            currency=_read(obj, "PaymentIntent.currency") or "",
            customer_id=_id(_read(obj, "PaymentIntent.customer")),
            latest_charge_id=_id(_read(obj, "PaymentIntent.latest_charge")),
            metadata=_metadata(_read(obj, "PaymentIntent.metadata")),
        )


@dataclass(frozen=True)
class ApplicationFeeView:
    id: str
    amount: int
    amount_refunded: int
    currency: str
    charge_id: str | None

    @classmethod
    def parse(cls, obj: dict) -> ApplicationFeeView:
        return cls(
            id=_read(obj, "ApplicationFee.id"),
            amount=_int(_read(obj, "ApplicationFee.amount")),
            amount_refunded=_int(_read(obj, "ApplicationFee.amount_refunded")),
            currency=_read(obj, "ApplicationFee.currency") or "",
            charge_id=_id(_read(obj, "ApplicationFee.charge")),
        )


@dataclass(frozen=True)
class TransferView:
    id: str
    amount: int
    amount_reversed: int
    currency: str
    destination: str | None
    source_transaction: str | None

    @classmethod
    def parse(cls, obj: dict) -> TransferView:
        return cls(
            id=_read(obj, "Transfer.id"),
            amount=_int(_read(obj, "Transfer.amount")),
            amount_reversed=_int(_read(obj, "Transfer.amount_reversed")),
            currency=_read(obj, "Transfer.currency") or "",
            destination=_id(_read(obj, "Transfer.destination")),
            source_transaction=_id(_read(obj, "Transfer.source_transaction")),
        )


@dataclass(frozen=True)
class TransferReversalView:
    id: str
    amount: int
    transfer_id: str | None

    @classmethod
    def parse(cls, obj: dict) -> TransferReversalView:
        return cls(
            id=_read(obj, "TransferReversal.id"),
            amount=_int(_read(obj, "TransferReversal.amount")),
            transfer_id=_id(_read(obj, "TransferReversal.transfer")),
        )


# --- subscriptions and invoices -------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionItemView:
    id: str
    price_id: str | None
    usage_type: str | None  # licensed | metered
    current_period_start: datetime | None
    current_period_end: datetime | None

    @classmethod
    def parse(cls, obj: dict) -> SubscriptionItemView:
        price = _read(obj, "SubscriptionItem.price")
        return cls(
            id=_read(obj, "SubscriptionItem.id"),
            price_id=_id(price),
            usage_type=_read(_obj(price), "Price.recurring.usage_type"),
            current_period_start=_when(_read(obj, "SubscriptionItem.current_period_start")),
            current_period_end=_when(_read(obj, "SubscriptionItem.current_period_end")),
        )


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    status: str | None
    customer_id: str | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    latest_invoice_id: str | None
    items: tuple[SubscriptionItemView, ...]
    metadata: dict[str, str]
    created: datetime | None

    @property
    def licence_id(self) -> str | None:
        return self.metadata.get("niche_licence_id")

    @property
    def period(self) -> tuple[datetime | None, datetime | None]:
        """The current period: Stripe keeps it on each item (one period for all)."""
        first = self.items[0] if self.items else None
        return (first.current_period_start, first.current_period_end) if first else (None, None)

    @classmethod
    def parse(cls, obj: dict) -> SubscriptionView:
        return cls(
            id=_read(obj, "Subscription.id"),
            status=_read(obj, "Subscription.status"),
            customer_id=_id(_read(obj, "Subscription.customer")),
            cancel_at_period_end=bool(_read(obj, "Subscription.cancel_at_period_end")),
            canceled_at=_when(_read(obj, "Subscription.canceled_at")),
            ended_at=_when(_read(obj, "Subscription.ended_at")),
            latest_invoice_id=_id(_read(obj, "Subscription.latest_invoice")),
            items=tuple(
                SubscriptionItemView.parse(item) for item in _read(obj, "Subscription.items[]")
            ),
            metadata=_metadata(_read(obj, "Subscription.metadata")),
            created=_when(_read(obj, "Subscription.created")),
        )


@dataclass(frozen=True)
class InvoicePaymentView:
    id: str
    invoice_id: str | None
    status: str | None  # paid | open | canceled
    amount_paid: int
    payment_intent_id: str | None
    charge_id: str | None

    @classmethod
    def parse(cls, obj: dict) -> InvoicePaymentView:
        return cls(
            id=_read(obj, "InvoicePayment.id"),
            invoice_id=_id(_read(obj, "InvoicePayment.invoice")),
            status=_read(obj, "InvoicePayment.status"),
            amount_paid=_int(_read(obj, "InvoicePayment.amount_paid")),
            payment_intent_id=_id(_read(obj, "InvoicePayment.payment.payment_intent")),
            charge_id=_id(_read(obj, "InvoicePayment.payment.charge")),
        )


@dataclass(frozen=True)
class InvoiceView:
    id: str
    status: str | None  # draft | open | paid | uncollectible | void
    amount_paid: int
    currency: str
    created: datetime | None
    paid_at: datetime | None
    subscription_id: str | None
    payments: tuple[InvoicePaymentView, ...]

    @classmethod
    def parse(cls, obj: dict) -> InvoiceView:
        return cls(
            id=_read(obj, "Invoice.id"),
            status=_read(obj, "Invoice.status"),
            amount_paid=_int(_read(obj, "Invoice.amount_paid")),
            currency=_read(obj, "Invoice.currency") or "",
            created=_when(_read(obj, "Invoice.created")),
            paid_at=_when(_read(obj, "Invoice.status_transitions.paid_at")),
            subscription_id=_id(_read(obj, "Invoice.parent.subscription_details.subscription")),
            payments=tuple(InvoicePaymentView.parse(p) for p in _read(obj, "Invoice.payments[]")),
        )


@dataclass(frozen=True)
class Page:
    """One page of a list: its items (raw, parsed by the caller's view) and whether
    more follow."""

    items: tuple[Any, ...]
    has_more: bool
