"""The gateway's cache of who may call what is exact: a change stops the very next call.

Each test first warms the cache with a call the gateway refuses after authorizing it (an
input past the limits, 422: the key, the licence and the version were all resolved), so
the next call would be answered from the cache if nothing invalidated it.
"""

import pytest

from accounts.services import api_key_revoke
from billing.models import UsageRecord
from billing.services import licence_revoke
from listings.services import listing_suspend, user_suspend
from marketplace import access_epochs
from serving import access_cache
from tests.serving.gateway.conftest import key_for

TOO_MANY_INPUTS = {"inputs": ["x"] * 10_000}


def predict(client, key, slug, body=TOO_MANY_INPUTS):
    return client.post(
        f"/api/v1/models/{slug}/predict", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


@pytest.fixture
def warm(api, bob, bob_licence, triage, real_redis):
    """bob's key, with the cache holding his key and his licence check for triage."""
    key = key_for(bob)
    assert predict(api(), key, triage.slug).status_code == 422
    return key


def test_a_warm_call_reads_no_database_row_to_be_authorized(
    api, warm, triage, django_assert_num_queries
):
    with django_assert_num_queries(0):
        response = predict(api(), warm, triage.slug)
    assert response.status_code == 422


def test_a_revoked_key_is_refused_on_the_very_next_call(api, bob, warm, triage):
    key_id = next(k.pk for k in bob.api_keys.all())
    api_key_revoke(user=bob, key_id=key_id)

    response = predict(api(), warm, triage.slug)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_a_revoked_licence_is_refused_on_the_very_next_call(api, carol, bob_licence, warm, triage):
    licence_revoke(licence_id=bob_licence.id, reason="chargeback", actor=carol)

    response = predict(api(), warm, triage.slug)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "licence_required"
    assert UsageRecord.objects.count() == 0


def test_a_suspended_listing_is_refused_on_the_very_next_call(api, carol, warm, triage):
    listing_suspend(moderator=carol, listing_id=triage.id, reason="misleading evaluation")

    response = predict(api(), warm, triage.slug)

    assert response.status_code == 404


def test_a_suspended_buyer_is_refused_on_the_very_next_call(api, bob, carol, warm, triage):
    user_suspend(moderator=carol, user=bob, reason="card testing")

    response = predict(api(), warm, triage.slug)

    assert response.status_code == 401


def test_a_change_whose_bump_was_lost_holds_no_longer_than_an_entrys_life(
    api, bob, warm, triage, monkeypatch
):
    # Given Redis missed the bump (the revocation itself committed)
    monkeypatch.setattr(access_epochs, "_incr", lambda keys: None)
    api_key_revoke(user=bob, key_id=next(k.pk for k in bob.api_keys.all()))
    # Then the cached key still answers for at most ENTRY_TTL_SECONDS…
    assert predict(api(), warm, triage.slug).status_code == 422
    assert access_cache.ENTRY_TTL_SECONDS <= 30
    # …and once its entry is that old the database refuses it
    monkeypatch.setattr(access_cache, "ENTRY_TTL_SECONDS", 0.0)
    assert predict(api(), warm, triage.slug).status_code == 401


def test_without_redis_nothing_cached_is_trusted(api, bob, warm, triage, monkeypatch):
    async def unreachable(client, user_id):
        return None

    monkeypatch.setattr(access_cache, "current_epochs", unreachable)
    api_key_revoke(user=bob, key_id=next(k.pk for k in bob.api_keys.all()))

    assert predict(api(), warm, triage.slug).status_code == 401
