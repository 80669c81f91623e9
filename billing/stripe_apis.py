"""The Stripe side of the API: checkout, Connect onboarding, the webhook endpoint."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.urls import NoReverseMatch, reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import stripe_gateway as gateway
from billing.checkout import checkout_start, connect_account_onboard
from billing.models import ConnectAccount
from billing.stripe_webhooks import stripe_event_receive
from marketplace.api import PUBLIC, BaseApi, ObjectTypeField
from marketplace.errors import InvalidInputError

# Stripe puts the session's id in place of this when it sends the buyer back.
SESSION_ID_TEMPLATE = "{CHECKOUT_SESSION_ID}"


def _default_return_path() -> str:
    try:  # the portal's return page, when the portal is installed
        return reverse("licence-return") + "?session_id=" + SESSION_ID_TEMPLATE
    except NoReverseMatch:
        return "/"


def own_url(request, value: str, *, default: str, field: str) -> str:
    """An absolute URL on this site for Stripe to send the browser back to: a path, or
    a URL on our own host (never elsewhere: no open redirect through Stripe)."""
    value = (value or default).strip()
    if value.startswith("/") and not value.startswith("//"):
        # build_absolute_uri would percent-encode the template's braces.
        marker = "niche-checkout-session-id"
        absolute = request.build_absolute_uri(value.replace(SESSION_ID_TEMPLATE, marker))
        return absolute.replace(marker, SESSION_ID_TEMPLATE)
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc == request.get_host():
        return value
    raise InvalidInputError(
        "Return addresses must be on this site.", fields={field: ["A path on this site."]}
    )


class CheckoutApi(BaseApi):
    """`POST /api/v1/billing/checkout`: buy an offer (Stripe Checkout, or the sandbox).

    Buying is an `infer` scope operation: a key that may call models may start a
    purchase, which moves money only once its owner pays on Stripe's page.
    """

    required_scopes = {"POST": "infer"}

    class CheckoutInputSerializer(serializers.Serializer):
        offer_id = serializers.UUIDField()
        success_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        cancel_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    class CheckoutOutputSerializer(serializers.Serializer):
        object = ObjectTypeField("billing.checkout")
        url = serializers.CharField()
        sandbox = serializers.BooleanField()
        licence_id = serializers.UUIDField(source="licence.id")
        licence_status = serializers.CharField(source="licence.status")
        checkout_session_id = serializers.CharField(source="licence.stripe_checkout_session_id")

    @extend_schema(request=CheckoutInputSerializer, responses={201: CheckoutOutputSerializer})
    def post(self, request):
        data = self.CheckoutInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        started = checkout_start(
            buyer=request.user,
            offer_id=data.validated_data["offer_id"],
            success_url=own_url(
                request,
                data.validated_data.get("success_url", ""),
                default=_default_return_path(),
                field="success_url",
            ),
            cancel_url=own_url(
                request,
                data.validated_data.get("cancel_url", ""),
                default="/",
                field="cancel_url",
            ),
        )
        return Response(self.CheckoutOutputSerializer(started).data, status=status.HTTP_201_CREATED)


class ConnectAccountOutputSerializer(serializers.Serializer):
    object = ObjectTypeField("billing.connect_account")
    status = serializers.SerializerMethodField()
    # Absent while status is "not_started" (no account yet).
    stripe_account_id = serializers.CharField(required=False)
    charges_enabled = serializers.BooleanField(required=False)
    payouts_enabled = serializers.BooleanField(required=False)
    details_submitted = serializers.BooleanField(required=False)
    sandbox = serializers.BooleanField(required=False)
    updated_at = serializers.DateTimeField(required=False)

    def get_status(self, account: ConnectAccount) -> str:
        return "enabled" if account.payouts_enabled else "pending"


class ConnectAccountApi(BaseApi):
    """`GET /api/v1/billing/connect`: the expert's payout account as Stripe last told us."""

    required_scopes = {"GET": "read"}

    @extend_schema(responses={200: ConnectAccountOutputSerializer})
    def get(self, request):
        account = ConnectAccount.objects.filter(expert=request.user).first()
        if account is None:
            return Response(
                {"object": "billing.connect_account", "status": "not_started"},
            )
        return Response(ConnectAccountOutputSerializer(account).data)


class ConnectOnboardApi(BaseApi):
    """`POST /api/v1/billing/connect/onboard`: a fresh Stripe onboarding link."""

    required_scopes = {"POST": "train"}

    class ConnectOnboardInputSerializer(serializers.Serializer):
        return_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        refresh_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    class AccountLinkOutputSerializer(serializers.Serializer):
        object = ObjectTypeField("billing.account_link")
        url = serializers.CharField()
        sandbox = serializers.BooleanField()

    @extend_schema(
        request=ConnectOnboardInputSerializer, responses={201: AccountLinkOutputSerializer}
    )
    def post(self, request):
        data = self.ConnectOnboardInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        url = connect_account_onboard(
            expert=request.user,
            return_url=own_url(
                request,
                data.validated_data.get("return_url", ""),
                default="/dashboard/",
                field="return_url",
            ),
            refresh_url=own_url(
                request,
                data.validated_data.get("refresh_url", ""),
                default="/dashboard/",
                field="refresh_url",
            ),
        )
        body = {"url": url, "sandbox": gateway.sandbox_mode()}
        return Response(self.AccountLinkOutputSerializer(body).data, status=status.HTTP_201_CREATED)


class StripeWebhookApi(BaseApi):
    """`POST /api/v1/billing/stripe/webhook`: Stripe's events, signature-checked first.

    Public (Stripe holds no session or key) and without session authentication, so no
    CSRF check: the Stripe-Signature header is the authentication. A bad or stale
    signature is 400 in the error contract; a stored event answers 200 at once and is
    processed by a task; a replayed event id is a 200 that changes nothing.
    """

    required_scopes = {"POST": PUBLIC}
    authentication_classes: list = []

    @extend_schema(request=None, responses={200: None})
    def post(self, request):
        event = gateway.webhook_event_verify(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
        _, created = stripe_event_receive(event=event)
        return Response({"received": True, "duplicate": not created})
