"""alice's monthly statement: gross, Stripe fees, platform fee, refunds, net, per
listing and licence, adding up to the cent."""

from datetime import date

import pytest

from billing import selectors
from billing.errors import InvalidPeriod
from billing.models import Payment, PaymentKind
from tests.billing.conftest import make_active_licence, make_offer
from tests.conftest import make_user
from tests.listings.conftest import make_listing

pytestmark = pytest.mark.django_db
NOVEMBER = date(2026, 11, 1)


def pay(licence, amount, *, fee, stripe_fee=None, period=NOVEMBER, kind=None, sandbox=False):
    kind = kind or (PaymentKind.REFUND if amount < 0 else PaymentKind.INVOICE)
    return Payment.objects.create(
        licence=licence, kind=kind, amount=amount, currency="usd", platform_fee=fee,
        stripe_fee=stripe_fee, period=period, sandbox=sandbox,
    )  # fmt: skip


@pytest.fixture
def alices_month(alice, bob, carol, listing):
    """Two listings, three buyers, a refund and a fee Stripe has not told us yet."""
    dave = make_user("dave@example.com")
    second = make_listing(alice, moderator=carol, title="Contract clause finder")
    subscription = make_active_licence(bob, make_offer(listing, "subscription", unit_amount=4999))
    download = make_active_licence(dave, make_offer(listing, "download", unit_amount=25_000))
    per_call = make_active_licence(bob, make_offer(second, "per_call", unit_amount=333))

    pay(subscription, 4999, fee=1000, stripe_fee=175)  # 20% of 49.99 rounds to 10.00
    pay(subscription, 4999, fee=1000, stripe_fee=175, period=date(2026, 10, 1))  # October
    pay(download, 25_000, fee=5000, stripe_fee=755, kind=PaymentKind.CHARGE)
    pay(download, -10_000, fee=-2000)  # a partial refund gives the fee back pro rata
    pay(per_call, 1_001, fee=200)  # stripe fee not known yet
    pay(per_call, 7_777, fee=1555, sandbox=True)  # sandbox money never mixes in
    return {"subscription": subscription, "download": download, "per_call": per_call}


def test_the_statement_itemises_each_licence_and_adds_up_to_the_cent(alice, alices_month):
    statement = selectors.statement_for(expert=alice, month=date(2026, 11, 17))

    by_slug = {s.listing_slug: s for s in statement.listings}
    triage, clauses = by_slug["radiology-report-triage"], by_slug["contract-clause-finder"]
    lines = {line.licence_id: line for line in triage.lines}

    sub = lines[alices_month["subscription"].id]
    assert (sub.gross, sub.refunds, sub.platform_fee, sub.stripe_fee, sub.net) == (
        4999, 0, 1000, 175, 3999,
    )  # fmt: skip
    down = lines[alices_month["download"].id]
    assert (down.gross, down.refunds, down.platform_fee, down.stripe_fee, down.net) == (
        25_000, -10_000, 3000, 755, 12_000,
    )  # fmt: skip
    assert (triage.gross, triage.refunds, triage.platform_fee, triage.net) == (
        29_999, -10_000, 4000, 15_999,
    )  # fmt: skip
    assert triage.stripe_fee_known is True
    assert clauses.stripe_fee_known is False  # shown as "where known"
    assert (clauses.gross, clauses.net) == (1_001, 801)

    for part in statement.listings:
        assert sum(x.net for x in part.lines) == part.net
        assert part.net == part.gross + part.refunds - part.platform_fee
    assert statement.totals == {
        "usd": {"gross": 31_000, "refunds": -10_000, "platform_fee": 4200,
                "stripe_fee": 930, "net": 16_800, "rounding": 0},
    }  # fmt: skip


def test_the_totals_equal_the_money_in_the_ledger(alice, alices_month):
    statement = selectors.statement_for(expert=alice, month=NOVEMBER)

    real = Payment.objects.filter(period=NOVEMBER, sandbox=False)
    paid_in = sum(p.amount for p in real)
    kept = sum(p.platform_fee for p in real)
    assert statement.totals["usd"]["net"] == paid_in - kept


def test_sandbox_money_has_a_statement_of_its_own(alice, alices_month):
    sandbox = selectors.statement_for(expert=alice, month=NOVEMBER, sandbox=True)

    assert sandbox.totals == {
        "usd": {
            "gross": 7777,
            "refunds": 0,
            "platform_fee": 1555,
            "stripe_fee": 0,
            "net": 6222,
            "rounding": 0,
        }
    }


def test_one_listing_only_and_nobody_elses_money(alice, mallory, alices_month, listing):
    only = selectors.statement_for(expert=alice, month=NOVEMBER, listing=listing)
    mallorys = selectors.statement_for(expert=mallory, month=NOVEMBER)

    assert [s.listing_slug for s in only.listings] == [listing.slug]
    assert (mallorys.listings, mallorys.totals) == ([], {})


def test_earnings_by_month_for_the_chart(alice, alices_month, monkeypatch):
    from datetime import UTC, datetime

    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 11, 20, tzinfo=UTC))

    months = selectors.earnings_by_month(expert=alice, months=12)

    assert [(m.month, m.gross, m.net) for m in months] == [
        (date(2026, 10, 1), 4999, 3999),
        (date(2026, 11, 1), 31_000, 16_800),
    ]


@pytest.mark.parametrize("text", ["2026-13", "26-11", "november", "2026-1"])
def test_a_month_is_yyyy_mm(text):
    with pytest.raises(InvalidPeriod):
        selectors.parse_month(text)


def test_a_busy_month_adds_up_to_the_cent(alice, carol, listing):
    """Many buyers, odd amounts, partial refunds: every sum is the ledger's sum."""
    import random

    rng = random.Random(2026)
    second = make_listing(alice, moderator=carol, title="Second")
    offers = [make_offer(listing, "per_call", unit_amount=137), make_offer(second, "per_call")]
    for n in range(30):
        buyer = make_user(f"buyer{n}@example.com")
        licence = make_active_licence(buyer, offers[n % 2])
        for _ in range(rng.randint(1, 4)):
            amount = rng.randint(1, 99_999)
            fee = amount * 20 // 100
            pay(licence, amount, fee=fee, stripe_fee=rng.choice([None, amount // 33]))
            if rng.random() < 0.3:
                back = rng.randint(1, amount)
                pay(licence, -back, fee=-(fee * back // amount))

    statement = selectors.statement_for(expert=alice, month=NOVEMBER)

    real = Payment.objects.filter(period=NOVEMBER, sandbox=False)
    totals = statement.totals["usd"]
    assert totals["gross"] == sum(p.amount for p in real if p.kind != PaymentKind.REFUND)
    assert totals["refunds"] == sum(p.amount for p in real if p.kind == PaymentKind.REFUND)
    assert totals["platform_fee"] == sum(p.platform_fee for p in real)
    assert totals["stripe_fee"] == sum(p.stripe_fee or 0 for p in real)
    assert totals["net"] == sum(p.amount for p in real) - sum(p.platform_fee for p in real)
    assert sum(len(part.lines) for part in statement.listings) == 30
    for part in statement.listings:
        for name in ("gross", "refunds", "platform_fee", "stripe_fee", "net"):
            assert getattr(part, name) == sum(getattr(line, name) for line in part.lines)
