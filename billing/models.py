"""Commerce: offers, licences, the usage ledger, payments and Stripe's events.

Money is integer minor units (cents) with a lower-case ISO-4217 currency. Status
fields change only through billing.services, one locked, state-checked service per
transition. Rows that record money or calls (payments, usage, webhook events, the
billing audit log) are never edited by hand: the admin shows them read-only.
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from listings.models import Listing, ListingVersion
from marketplace.append_only import AppendOnlyModel
from training_worker.models import ModelVersion


class ConnectAccount(models.Model):
    """An expert's Stripe Connect Express account: where their share of a charge goes."""

    expert = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="connect_account"
    )
    stripe_account_id = models.CharField(
        max_length=64, unique=True, help_text="acct_… (a sandbox id when sandbox is set)."
    )
    charges_enabled = models.BooleanField(default=False, help_text="From account.updated.")
    payouts_enabled = models.BooleanField(
        default=False,
        help_text="From account.updated; a priced offer cannot be bought until this is set.",
    )
    details_submitted = models.BooleanField(default=False, help_text="From account.updated.")
    sandbox = models.BooleanField(
        default=False, help_text="Created in sandbox mode: no Stripe account behind it."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.stripe_account_id} ({self.expert})"


class OfferKind(models.TextChoices):
    PER_CALL = "per_call", "Per call"
    SUBSCRIPTION = "subscription", "Subscription"
    DOWNLOAD = "download", "Download"
    FREE_TRIAL = "free_trial", "Free trial"


# Offer kinds whose licence lets its holder call the model through the API; a download
# licence grants the export bundle only.
CALL_KINDS = (OfferKind.PER_CALL, OfferKind.SUBSCRIPTION, OfferKind.FREE_TRIAL)


class Overage(models.TextChoices):
    REFUSE = "refuse", "Refuse calls over the quota"
    BILL = "bill", "Bill calls over the quota"


class OfferStatus(models.TextChoices):
    ACTIVE = "active"
    RETIRED = "retired"


class Offer(models.Model):
    """A price an expert sets on a listing. Immutable once a licence refers to it:
    `offer_update` retires it and creates its successor."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="offers")
    kind = models.CharField(max_length=20, choices=OfferKind.choices)
    name = models.CharField(
        max_length=60, blank=True, help_text="Optional label shown to buyers, e.g. 'Team'."
    )
    currency = models.CharField(
        max_length=3, help_text="ISO-4217, lower-case, e.g. 'usd' (Stripe's spelling)."
    )
    unit_amount = models.BigIntegerField(
        help_text=(
            "Minor units. per_call: per 1,000 calls; subscription: per month; "
            "download: once; free_trial: 0."
        )
    )
    included_calls = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="subscription: calls included per month; free_trial: calls in the trial.",
    )
    overage = models.CharField(
        max_length=10,
        choices=Overage.choices,
        blank=True,
        help_text="subscription only: what happens past included_calls.",
    )
    overage_unit_amount = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="subscription with overage=bill: minor units per 1,000 calls past the quota.",
    )
    status = models.CharField(
        max_length=10, choices=OfferStatus.choices, default=OfferStatus.ACTIVE
    )
    replaces = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The retired offer this one succeeded (offer_update).",
    )
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
    stripe_product_id = models.CharField(max_length=64, blank=True, help_text="Set lazily.")
    stripe_price_id = models.CharField(
        max_length=64,
        blank=True,
        help_text="One-time, recurring or metered price, as the kind needs; set lazily.",
    )
    stripe_overage_price_id = models.CharField(
        max_length=64,
        blank=True,
        help_text="subscription with overage=bill: the metered price for calls past the quota.",
    )
    stripe_meter_id = models.CharField(
        max_length=64, blank=True, help_text="The offer's billing meter (metered prices)."
    )
    batch_price_percent = models.PositiveSmallIntegerField(
        default=50,
        help_text=(
            "What a row of a batch (serving's Batch API) bills, in percent of a per-call "
            "price: 50 = half price."
        ),
    )

    class Meta:
        ordering = ["listing", "created_at"]
        indexes = [models.Index(fields=["listing", "status"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(unit_amount__gte=0), name="offer_amount_not_negative"
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="free_trial") | models.Q(unit_amount=0),
                name="free_trial_is_free",
            ),
            models.CheckConstraint(
                condition=models.Q(overage_unit_amount__isnull=True)
                | models.Q(overage_unit_amount__gte=0),
                name="offer_overage_not_negative",
            ),
            models.UniqueConstraint(
                fields=["listing"],
                condition=models.Q(kind="free_trial", status="active"),
                name="one_active_free_trial_per_listing",
            ),
            models.CheckConstraint(
                condition=models.Q(batch_price_percent__lte=100),
                name="offer_batch_price_at_most_full",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.unit_amount} {self.currency} on {self.listing}"


class LicenceStatus(models.TextChoices):
    PENDING = "pending"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REVOKED = "revoked"


# A licence in one of these states is "live": it may serve calls or downloads.
LIVE_LICENCE_STATUSES = (LicenceStatus.ACTIVE, LicenceStatus.PAST_DUE)
ENDED_LICENCE_STATUSES = (LicenceStatus.CANCELLED, LicenceStatus.EXPIRED, LicenceStatus.REVOKED)


class Licence(models.Model):
    """A buyer's right to a listing under one offer and the terms agreed at purchase.

    `pending → active → past_due | cancelled | expired | revoked` through billing.services.
    A buyer holds at most one live calling licence (per_call, subscription or trial) and
    one live download licence per listing; a free trial is taken once per listing.
    Pending licences are not unique: an abandoned checkout must not block a retry.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="licences"
    )
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="licences")
    offer = models.ForeignKey(Offer, on_delete=models.PROTECT, related_name="licences")
    kind = models.CharField(
        max_length=20, choices=OfferKind.choices, help_text="The offer's kind, copied."
    )
    status = models.CharField(
        max_length=20, choices=LicenceStatus.choices, default=LicenceStatus.PENDING
    )
    terms = models.JSONField(
        help_text="billing.terms.LicenceTerms at purchase; never changes under the buyer."
    )
    sandbox = models.BooleanField(default=False, help_text="Bought in sandbox: no money moved.")
    calls_included = models.PositiveIntegerField(
        null=True, blank=True, help_text="The offer's included_calls, copied."
    )
    call_quota = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Hard limit of calls per period (whole trial for free_trial); calls past it "
            "are refused. Null: no limit. From the offer and the terms' monthly cap."
        ),
    )
    current_period_start = models.DateTimeField(
        null=True, blank=True, help_text="Stripe's current period (the subscription item's)."
    )
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(
        default=False,
        help_text=(
            "Winding down: access lasts until access_ends_at and billing never renews "
            "(the buyer cancelled, or the expert delisted the listing)."
        ),
    )
    access_ends_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="While winding down: when access ends (the paid period's end).",
    )
    spend_cap_amount = models.BigIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Metered licences (per_call; subscription with billed overage): the most the "
            "buyer may be billed for calls in one period, minor units. Enforced as a call "
            "limit (spend_cap_calls) at the gateway."
        ),
    )
    spend_cap_calls = models.PositiveIntegerField(
        null=True, blank=True, help_text="Calls per period the spend cap allows (derived)."
    )
    stripe_subscription_status = models.CharField(
        max_length=32, blank=True, help_text="The subscription's status as Stripe last said."
    )
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    stripe_subscription_id = models.CharField(max_length=64, blank=True)
    stripe_subscription_item_id = models.CharField(
        max_length=64, blank=True, help_text="The metered item usage is reported to."
    )
    stripe_payment_intent_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["buyer", "status"]),
            models.Index(fields=["listing", "status"]),
            models.Index(fields=["stripe_subscription_id"]),
            models.Index(fields=["stripe_checkout_session_id"]),
        ]
        constraints = [
            # Also the index licence_for_call reads: (buyer, listing) of live licences.
            models.UniqueConstraint(
                fields=["buyer", "listing"],
                condition=models.Q(status__in=["active", "past_due"]) & ~models.Q(kind="download"),
                name="one_live_calling_licence",
            ),
            models.UniqueConstraint(
                fields=["buyer", "listing"],
                condition=models.Q(status__in=["active", "past_due"], kind="download"),
                name="one_live_download_licence",
            ),
            models.UniqueConstraint(
                fields=["buyer", "listing"],
                condition=models.Q(kind="free_trial"),
                name="one_free_trial_per_buyer",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.buyer} · {self.listing} · {self.kind} ({self.status})"


class UsageStatus(models.TextChoices):
    OK = "ok", "Served"
    ERROR = "error", "Failed (not billed)"


class UsageRecord(models.Model):
    """The ledger: one row per billable call, written once per idempotency key."""

    id = models.BigAutoField(primary_key=True)
    licence = models.ForeignKey(Licence, on_delete=models.PROTECT, related_name="usage")
    buyer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The licence's buyer, copied so a buyer's usage reads from one index.",
    )
    listing = models.ForeignKey(
        Listing, on_delete=models.PROTECT, related_name="+", help_text="Copied from the licence."
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The key that made the call; null for a session.",
    )
    listing_version = models.ForeignKey(
        ListingVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    units = models.PositiveIntegerField(default=1, help_text="Calls this row counts.")
    price_percent = models.PositiveSmallIntegerField(
        default=100,
        help_text=(
            "Percent of the per-call price each unit bills: 100 for an interactive call, "
            "the offer's batch_price_percent for a batch row."
        ),
    )
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=UsageStatus.choices, default=UsageStatus.OK)
    idempotency_key = models.CharField(
        max_length=128, unique=True, help_text="Serving's request id: the row is written once."
    )
    period_start = models.DateTimeField(help_text="The licence period the call counts in.")
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=(
            "When the outcome became final (served or failed). A settled row never changes; "
            "metered billing reads settled rows only."
        ),
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["buyer", "created_at"]),
            models.Index(fields=["licence", "period_start"]),
            models.Index(fields=["listing", "created_at"]),
            models.Index(
                fields=["created_at"],
                condition=models.Q(settled_at__isnull=True),
                name="usage_unsettled",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(price_percent__lte=100), name="usage_price_at_most_full"
            )
        ]

    def __str__(self) -> str:
        return f"{self.units} call(s) on {self.licence_id} at {self.created_at:%Y-%m-%d %H:%M}"


class PlatformUsage(models.Model):
    """Calls the platform itself answered: the specialist router's generalist fallback
    (serving/router.py), metered at the operator's price (ROUTER_FALLBACK_UNIT_AMOUNT per
    call, in ROUTER_FALLBACK_CURRENCY) and owed to the platform, not to an expert. Written
    before the engine runs and settled after, as UsageRecord is; a failed call is settled
    `error` and not billed."""

    id = models.BigAutoField(primary_key=True)
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=20, default="fallback", help_text="What answered.")
    task = models.CharField(max_length=40)
    units = models.PositiveIntegerField(default=1, help_text="Calls this row counts.")
    unit_amount = models.BigIntegerField(help_text="The operator's price per call, minor units.")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10, choices=UsageStatus.choices, default=UsageStatus.OK)
    idempotency_key = models.CharField(max_length=128, unique=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["buyer", "created_at"])]

    def __str__(self) -> str:
        return f"{self.units} {self.kind} call(s) by {self.buyer_id} at {self.created_at:%Y-%m-%d}"


class ShareRole(models.TextChoices):
    MEMBER = "member", "The member that answered"
    STEP = "step", "A pipeline step"
    CURATOR = "curator", "The garden's curator"
    PLATFORM = "platform", "The platform's generalist answered"


class GardenShare(models.Model):
    """The revenue split of one call to a garden: one row per party that worked on it
    (the member that answered, or each pipeline step; the curator; the platform when its
    generalist answered), written with the call's ledger row. `percent` is the party's
    part of the call's price after the platform fee; `amount_micros` that part in
    millionths of a minor unit at the licence's per-call price (0 for a trial). A share
    counts once its call is settled as served (UsageRecord.status ok)."""

    id = models.BigAutoField(primary_key=True)
    usage = models.ForeignKey(UsageRecord, on_delete=models.PROTECT, related_name="garden_shares")
    licence = models.ForeignKey(Licence, on_delete=models.PROTECT, related_name="+")
    garden = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="+")
    listing = models.ForeignKey(
        Listing,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The member listing that worked (the garden itself for the curator's "
        "share; null for the platform's).",
    )
    payee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Null: the platform.",
    )
    role = models.CharField(max_length=10, choices=ShareRole.choices)
    percent = models.DecimalField(max_digits=6, decimal_places=3)
    amount_micros = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3)
    sandbox = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    paid_by = models.ForeignKey(
        "Payment",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="garden_shares",
        help_text="The garden licence's payment whose transfers paid this share out.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["payee", "created_at"]),
            models.Index(fields=["licence", "paid_by"]),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.percent}% of call {self.usage_id}"


class GardenPayout(models.Model):
    """What one party received from one payment of a garden licence: a Stripe transfer
    from the platform's balance to the payee's Connect account (separate charges and
    transfers), sized by the party's served shares that the payment covers."""

    payment = models.ForeignKey("Payment", on_delete=models.PROTECT, related_name="garden_payouts")
    garden = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="+")
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="+")
    payee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=10, choices=ShareRole.choices)
    amount = models.BigIntegerField(
        help_text="Minor units transferred; negative for a reversal (a refund took it back)."
    )
    currency = models.CharField(max_length=3)
    period = models.DateField(help_text="The payment's statement month.")
    sandbox = models.BooleanField(default=False)
    stripe_transfer_id = models.CharField(max_length=64, blank=True)
    stripe_reversal_id = models.CharField(max_length=64, blank=True)
    reverses = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reversals",
        help_text="For a reversal: the payout it takes back from (its payment is the refund).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["payment", "payee", "listing", "role"], name="garden_payout_once"
            ),
            models.CheckConstraint(
                condition=models.Q(reverses__isnull=True, amount__gte=0)
                | models.Q(reverses__isnull=False, amount__lte=0),
                name="payout_sign_follows_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} to {self.payee_id} for {self.listing_id}"


class LicenceUsagePeriod(models.Model):
    """A licence's call counter for one period, incremented atomically by usage_record."""

    licence = models.ForeignKey(Licence, on_delete=models.PROTECT, related_name="periods")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(null=True, blank=True, help_text="Null: a trial's.")
    calls = models.BigIntegerField(
        default=0,
        help_text="The quota counter: calls taken in this period (a failed call gives its back).",
    )
    closed_at = models.DateTimeField(
        null=True, blank=True, help_text="Set once the period's usage is fully reported."
    )
    report_failures = models.PositiveIntegerField(
        default=0, help_text="Consecutive failed reports to Stripe (reset by a success)."
    )
    next_report_at = models.DateTimeField(
        null=True, blank=True, help_text="Backoff: not reported again before this."
    )
    last_report_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["licence", "period_start"], name="one_counter_per_period"
            ),
            models.CheckConstraint(
                condition=models.Q(calls__gte=0), name="period_calls_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.licence_id} from {self.period_start:%Y-%m-%d}: {self.calls} calls"


class MeterReport(models.Model):
    """One meter event sent (or about to be sent) to Stripe for a period: the facts the
    next report is computed from. `billable_total` is the period's billable calls, from
    settled ledger rows, when this report was made; `value` what it added. Written before
    Stripe is called (its identifier is the idempotency), marked sent once Stripe took it."""

    period = models.ForeignKey(
        LicenceUsagePeriod, on_delete=models.PROTECT, related_name="meter_reports"
    )
    value = models.PositiveIntegerField(help_text="Calls this event adds (Stripe sums them).")
    billable_total = models.BigIntegerField(help_text="The period's billable calls through it.")
    identifier = models.CharField(max_length=100, unique=True, help_text="Stripe's dedupe key.")
    event_timestamp = models.BigIntegerField(help_text="The meter event's timestamp (unix).")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["period", "billable_total"]
        constraints = [
            models.UniqueConstraint(
                fields=["period", "billable_total"], name="one_report_per_total"
            ),
            models.CheckConstraint(condition=models.Q(value__gt=0), name="report_adds_calls"),
        ]

    def __str__(self) -> str:
        return f"+{self.value} → {self.billable_total} for period {self.period_id}"


class PaymentKind(models.TextChoices):
    CHARGE = "charge", "One-time charge"
    INVOICE = "invoice", "Subscription invoice"
    REFUND = "refund", "Refund"


class Payment(models.Model):
    """Money that moved for a licence. Refunds are rows of their own, negative."""

    licence = models.ForeignKey(Licence, on_delete=models.PROTECT, related_name="payments")
    kind = models.CharField(max_length=10, choices=PaymentKind.choices)
    amount = models.BigIntegerField(help_text="Minor units the buyer paid; negative for a refund.")
    currency = models.CharField(max_length=3, help_text="ISO-4217, lower-case.")
    stripe_fee = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Stripe's processing fee from the balance transaction; null when unknown.",
    )
    platform_fee = models.BigIntegerField(
        default=0,
        help_text=(
            "Application fee kept by the platform, as Stripe recorded it; negative when a "
            "refund returns it."
        ),
    )
    expert_amount = models.BigIntegerField(
        null=True,
        blank=True,
        help_text=(
            "What reached the expert's Connect account: the transfer (negative: its "
            "reversal), as Stripe recorded it; null while unknown."
        ),
    )
    period = models.DateField(help_text="First day of the month the statement counts it in.")
    sandbox = models.BooleanField(default=False, help_text="No money moved.")
    stripe_charge_id = models.CharField(max_length=64, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    stripe_refund_id = models.CharField(max_length=64, blank=True)
    stripe_payment_intent_id = models.CharField(max_length=64, blank=True)
    stripe_application_fee_id = models.CharField(max_length=64, blank=True)
    stripe_transfer_id = models.CharField(
        max_length=64, blank=True, help_text="The transfer (a refund: its transfer reversal)."
    )
    refunds = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="refund_rows",
        help_text="For a refund: the payment it gives back.",
    )
    reason = models.TextField(blank=True, help_text="For a refund: why (also in the audit log).")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["period", "licence"])]
        constraints = [
            # A webhook delivered twice or a handler re-run records the money once.
            models.UniqueConstraint(
                fields=["stripe_charge_id"],
                condition=models.Q(kind__in=["charge", "invoice"]) & ~models.Q(stripe_charge_id=""),
                name="payment_charge_once",
            ),
            models.UniqueConstraint(
                fields=["stripe_invoice_id"],
                condition=~models.Q(stripe_invoice_id="") & models.Q(kind="invoice"),
                name="payment_invoice_once",
            ),
            models.UniqueConstraint(
                fields=["stripe_refund_id"],
                condition=~models.Q(stripe_refund_id=""),
                name="payment_refund_once",
            ),
            models.CheckConstraint(
                condition=models.Q(kind="refund", amount__lte=0)
                | (~models.Q(kind="refund") & models.Q(amount__gte=0)),
                name="payment_sign_follows_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency} for {self.licence_id}"


class StripeEvent(models.Model):
    """A webhook event, stored once by Stripe's id before it is processed."""

    id = models.CharField(primary_key=True, max_length=255, help_text="Stripe's evt_… id.")
    type = models.CharField(max_length=100, db_index=True)
    payload = models.JSONField(help_text="The event as delivered (verified).")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="Backoff after a failed attempt."
    )
    last_error = models.TextField(blank=True)
    source = models.CharField(
        max_length=10,
        default="webhook",
        help_text="webhook, or reconciler (listed from Stripe after a delivery was missed).",
    )

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class ExportDownload(models.Model):
    """One download of a version's export bundle."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="export_downloads"
    )
    licence = models.ForeignKey(
        Licence,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="downloads",
        help_text="Null when the version's owner downloads their own.",
    )
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    manifest_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user} downloaded {self.model_version_id}"


class BillingAuditEntry(AppendOnlyModel):
    """Who did what to money or a licence by hand (refunds, revocations), and why."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Null: the platform acted by itself (a duplicate refunded, a teardown).",
    )
    action = models.CharField(max_length=40, help_text="e.g. refund, licence_revoke.")
    target_type = models.CharField(max_length=40, help_text="e.g. payment, licence.")
    target_id = models.CharField(max_length=64)
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "billing audit entries"

    def __str__(self) -> str:
        who = self.actor or "platform"
        return f"{who} {self.action} {self.target_type}:{self.target_id}"


class IntentKind(models.TextChoices):
    CHECKOUT_SESSION_CREATE = "checkout_session_create"
    CHECKOUT_SESSION_EXPIRE = "checkout_session_expire"
    REFUND_CREATE = "refund_create"
    SUBSCRIPTION_CANCEL = "subscription_cancel"  # now (access ended)
    SUBSCRIPTION_CANCEL_AT_PERIOD_END = "subscription_cancel_at_period_end"
    SUBSCRIPTION_RESUME = "subscription_resume"
    TRANSFER_CREATE = "transfer_create"  # a garden payout (separate charges and transfers)
    TRANSFER_REVERSAL_CREATE = "transfer_reversal_create"  # a garden payout refunded


class IntentStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # Stripe refused it: an operator looks (admin), the reconciler flags


class StripeIntent(models.Model):
    """The outbox: a write we mean to make at Stripe, recorded in the transaction that
    decided it, then sent outside any transaction with its idempotency key, and its
    result recorded. A crash between leaves a pending row that the task or the
    reconciler sends again (the same key: Stripe answers the first result again)."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=40, choices=IntentKind.choices)
    licence = models.ForeignKey(
        Licence, null=True, blank=True, on_delete=models.PROTECT, related_name="stripe_intents"
    )
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.PROTECT, related_name="stripe_intents"
    )
    params = models.JSONField(default=dict, help_text="What is sent (ids and amounts).")
    idempotency_key = models.CharField(max_length=200, unique=True)
    status = models.CharField(
        max_length=10, choices=IntentStatus.choices, default=IntentStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    result_id = models.CharField(max_length=255, blank=True, help_text="Stripe's object id.")
    result = models.JSONField(default=dict, blank=True, help_text="What we keep of the answer.")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who asked (a moderator's refund); null for the platform.",
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"


class ReconciliationRun(models.Model):
    """One pass of the reconciler: what it read, repaired and flagged."""

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    events_listed = models.PositiveIntegerField(default=0)
    events_recovered = models.PositiveIntegerField(default=0)
    licences_checked = models.PositiveIntegerField(default=0)
    repaired = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"reconciliation {self.started_at:%Y-%m-%d %H:%M}"


class IssueStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"


class ReconciliationIssue(models.Model):
    """A disagreement between Stripe and our books that is not safe to repair by
    itself, with the evidence, for a moderator (admin: Reconciliation issues)."""

    kind = models.CharField(max_length=40, db_index=True)
    stripe_object_id = models.CharField(max_length=255, blank=True, db_index=True)
    licence = models.ForeignKey(
        Licence, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    summary = models.TextField()
    evidence = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=IssueStatus.choices, default="open")
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "stripe_object_id"],
                condition=models.Q(status="open"),
                name="one_open_issue_per_object",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.stripe_object_id} ({self.status})"
