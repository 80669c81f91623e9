"""Commerce fixtures: alice's published listing, her offers, bob's licences.

alice (expert) sells, bob buys, carol moderates, mallory attacks.
"""

import pytest

from billing import services
from billing.models import ConnectAccount, Offer, OfferKind
from tests.billing.stripe_server import (  # noqa: F401  (fixtures: the local Stripe)
    local_stripe_server,
    stripe_server,
    stripe_webhooks_to_live_server,
)
from tests.listings.conftest import make_listing


def make_offer(listing, kind: str = OfferKind.SUBSCRIPTION, **fields) -> Offer:
    """An active offer on `listing`, through the service, with sensible defaults."""
    defaults = {
        OfferKind.PER_CALL: {"currency": "usd", "unit_amount": 200},
        OfferKind.SUBSCRIPTION: {
            "currency": "usd", "unit_amount": 4900, "included_calls": 10_000, "overage": "refuse",
        },
        OfferKind.DOWNLOAD: {"currency": "usd", "unit_amount": 25_000},
        OfferKind.FREE_TRIAL: {"currency": "usd", "unit_amount": 0, "included_calls": 100},
    }[kind]  # fmt: skip
    return services.offer_create(
        owner=listing.owner, listing=listing, kind=kind, **(defaults | fields)
    )


def make_payable(expert) -> ConnectAccount:
    """The expert finished Connect onboarding: payouts enabled."""
    account, _ = ConnectAccount.objects.update_or_create(
        expert=expert,
        defaults={
            "stripe_account_id": f"acct_{expert.pk:08d}test",
            "charges_enabled": True,
            "payouts_enabled": True,
            "details_submitted": True,
        },
    )
    return account


def make_active_licence(buyer, offer, *, sandbox: bool = True, **activation):
    licence = services.licence_create(buyer=buyer, offer=offer, sandbox=sandbox)
    return services.licence_activate(licence_id=licence.id, **activation)


@pytest.fixture
def listing(alice, carol):
    """alice's published listing; its terms allow commercial use and on-prem download."""
    return make_listing(alice, moderator=carol, commercial_use=True, on_prem_download=True)


@pytest.fixture
def payable_alice(alice):
    return make_payable(alice)
