"""Email verification: a new account proves its address before it mints an API key or
takes a free trial; the link is signed, expiring and single-use; a new one can be sent.

Personas (tests/conftest.py) are verified; `newbie` signed up a moment ago and is not.
"""

import re
import time
from io import StringIO

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from accounts.models import ApiKey, User
from accounts.services import email_verification_token
from billing.models import Licence, OfferKind
from tests.billing.conftest import make_offer
from tests.conftest import make_user
from tests.listings.conftest import make_listing

LINK = re.compile(r"https?://[^/\s]+(/verify-email/[^/\s]+/)")


@pytest.fixture
def newbie(db) -> User:
    return make_user("newbie@example.com", display_name="Newbie", email_verified=False)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def emailed_link(to: str) -> str:
    """The path of the last verification link mailed to `to`."""
    message = [m for m in mail.outbox if m.to == [to]][-1]
    return LINK.search(message.body).group(1)


# --- the gates -------------------------------------------------------------------------


def test_an_unverified_user_cannot_mint_an_api_key_through_the_api(newbie):
    response = signed_in(newbie).post(
        "/api/v1/api_keys", {"name": "ci"}, content_type="application/json"
    )

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "email_not_verified"
    assert set(error) == {"code", "message", "fields"}
    assert "newbie@example.com" in error["message"]
    assert not ApiKey.objects.filter(user=newbie).exists()


def test_an_unverified_user_cannot_mint_a_key_from_the_portal(newbie):
    client = signed_in(newbie)

    dashboard = client.get("/dashboard/").content.decode()
    refused = client.post("/dashboard/api-keys/", {"name": "laptop", "scopes": ["read"]})

    assert 'data-testid="email-unverified"' in dashboard
    assert 'data-testid="keys-need-verification"' in dashboard
    assert 'action="/dashboard/api-keys/"' not in dashboard  # no form to fill in
    assert refused.status_code == 302
    page = client.get("/dashboard/").content.decode()
    assert "Verify your email address before you create an API key" in page
    assert not ApiKey.objects.filter(user=newbie).exists()


def test_an_unverified_user_cannot_take_a_free_trial(newbie, alice, carol):
    listing = make_listing(alice, moderator=carol)
    trial = make_offer(listing, OfferKind.FREE_TRIAL, included_calls=50)
    client = signed_in(newbie)

    api = client.post(
        "/api/v1/billing/checkout", {"offer_id": str(trial.id)}, content_type="application/json"
    )
    portal = client.post(f"/catalogue/{listing.slug}/buy/", {"offer": str(trial.id)}, follow=True)

    assert api.status_code == 403
    assert api.json()["error"]["code"] == "email_not_verified"
    assert "take a free trial" in api.json()["error"]["message"]
    assert "Verify your email address before you take a free trial" in portal.content.decode()
    assert not Licence.objects.filter(buyer=newbie).exists()


def test_once_verified_the_same_user_mints_a_key_and_takes_the_trial(newbie, alice, carol):
    trial = make_offer(make_listing(alice, moderator=carol), OfferKind.FREE_TRIAL)
    client = signed_in(newbie)
    client.post(f"/verify-email/{email_verification_token(user=newbie)}/")

    key = client.post("/api/v1/api_keys", {"name": "ci"}, content_type="application/json")
    bought = client.post(
        "/api/v1/billing/checkout", {"offer_id": str(trial.id)}, content_type="application/json"
    )

    assert key.status_code == 201
    assert bought.status_code == 201
    assert ApiKey.objects.filter(user=newbie).count() == 1
    assert Licence.objects.get(buyer=newbie).kind == OfferKind.FREE_TRIAL


# --- the link ---------------------------------------------------------------------------


def test_sign_up_mails_a_link_that_verifies_the_address(db):
    client = Client()

    signed_up = client.post(
        "/signup/",
        {"email": "Zoe@Example.com", "password": "plum orbit lantern 7"},
        REMOTE_ADDR="198.51.100.20",
    )

    zoe = User.objects.get(email="zoe@example.com")
    assert signed_up.status_code == 302 and not zoe.email_verified
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["zoe@example.com"]
    assert "Verify your email address" in mail.outbox[0].subject
    link = emailed_link("zoe@example.com")
    assert mail.outbox[0].body.count("http://testserver/verify-email/") == 1
    dashboard = client.get("/dashboard/").content.decode()
    assert "We sent a link to zoe@example.com" in dashboard

    # opened in another browser, where nobody is signed in: GET changes nothing...
    elsewhere = Client()
    page = elsewhere.get(link)
    zoe.refresh_from_db()
    assert page.status_code == 200 and 'data-testid="verify-email-confirm"' in page.content.decode()
    assert not zoe.email_verified
    # ...its button verifies
    confirmed = elsewhere.post(link)

    assert confirmed.status_code == 302 and confirmed["Location"] == "/login/"
    zoe.refresh_from_db()
    assert zoe.email_verified
    assert zoe.verified_email == "zoe@example.com" and zoe.email_verified_at is not None
    assert 'data-testid="email-verified"' in client.get("/dashboard/").content.decode()


def test_a_link_works_once(newbie):
    link = f"/verify-email/{email_verification_token(user=newbie)}/"
    client = signed_in(newbie)
    client.post(link)
    newbie.refresh_from_db()
    first_verified_at = newbie.email_verified_at

    again = client.post(link, follow=True)
    api_again = Client().post(
        "/api/v1/me/verify-email",
        {"token": link.split("/")[2]},
        content_type="application/json",
    )

    assert "already verified" in again.content.decode()
    assert api_again.status_code == 409
    assert api_again.json()["error"]["code"] == "email_already_verified"
    newbie.refresh_from_db()
    assert newbie.email_verified_at == first_verified_at
    assert 'data-testid="verify-email-done"' in Client().get(link).content.decode()


@override_settings(EMAIL_VERIFICATION_LINK_HOURS=72)
def test_an_expired_link_is_refused_and_verifies_nothing(newbie):
    four_days_ago = time.time() - 4 * 24 * 3600
    token = email_verification_token(user=newbie, now=four_days_ago)

    page = Client().post(f"/verify-email/{token}/")
    api = Client().post(
        "/api/v1/me/verify-email", {"token": token}, content_type="application/json"
    )

    assert page.status_code == 422 and "expired" in page.content.decode()
    assert api.status_code == 422
    assert api.json()["error"]["code"] == "verification_link_expired"
    newbie.refresh_from_db()
    assert not newbie.email_verified


def test_an_altered_or_foreign_link_is_refused(newbie, mallory):
    token = email_verification_token(user=newbie)
    tampered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    from django.core import signing

    forged = signing.dumps({"user": newbie.pk, "email": newbie.email}, salt="other-purpose")

    answers = [
        Client().post("/api/v1/me/verify-email", {"token": t}, content_type="application/json")
        for t in (tampered, forged, "not-a-token")
    ]

    assert [a.status_code for a in answers] == [422, 422, 422]
    assert {a.json()["error"]["code"] for a in answers} == {"invalid_verification_link"}
    assert Client().get(f"/verify-email/{tampered}/").status_code == 422
    newbie.refresh_from_db()
    assert not newbie.email_verified


def test_a_link_for_an_old_address_does_not_verify_a_new_one(newbie):
    token = email_verification_token(user=newbie)
    User.objects.filter(pk=newbie.pk).update(email="mallory.took.it@example.com")

    response = Client().post(
        "/api/v1/me/verify-email", {"token": token}, content_type="application/json"
    )

    assert response.status_code == 422
    newbie.refresh_from_db()
    assert not newbie.email_verified


def test_changing_a_verified_address_makes_it_unverified(bob):
    assert bob.email_verified
    User.objects.filter(pk=bob.pk).update(email="bob.new@example.com")
    bob.refresh_from_db()

    response = signed_in(bob).post(
        "/api/v1/api_keys", {"name": "ci"}, content_type="application/json"
    )

    assert not bob.email_verified
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "email_not_verified"


def test_the_api_verifies_with_the_token_alone(newbie):
    token = email_verification_token(user=newbie)

    response = Client().post(
        "/api/v1/me/verify-email", {"token": token}, content_type="application/json"
    )

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "email_verification"
    assert body["email"] == "newbie@example.com" and body["email_verified"] is True
    newbie.refresh_from_db()
    assert newbie.email_verified


def test_me_says_whether_the_address_is_verified(newbie, bob, api):
    unverified = signed_in(newbie).get("/api/v1/me").json()
    verified = api(bob).get("/api/v1/me").json()

    assert unverified["email_verified"] is False and unverified["email_verified_at"] is None
    assert verified["email_verified"] is True and verified["email_verified_at"]


# --- sending a new link -------------------------------------------------------------------


@override_settings(EMAIL_VERIFICATION_RESEND_SECONDS=60, EMAIL_VERIFICATION_MAX_PER_DAY=5)
def test_resend_mails_a_new_link_then_waits(newbie):
    client = signed_in(newbie)

    first = client.post("/api/v1/me/verify-email/resend")
    second = client.post("/api/v1/me/verify-email/resend")

    assert first.status_code == 202
    assert first.json() == {
        "object": "email_verification",
        "email": "newbie@example.com",
        "email_verified": False,
        "email_verified_at": None,
    }
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "verification_email_rate_limited"
    assert 1 <= int(second["Retry-After"]) <= 60
    assert len(mail.outbox) == 1
    assert Client().post(emailed_link("newbie@example.com")).status_code == 302
    newbie.refresh_from_db()
    assert newbie.email_verified


@override_settings(EMAIL_VERIFICATION_RESEND_SECONDS=1, EMAIL_VERIFICATION_MAX_PER_DAY=2)
def test_resend_has_a_daily_ceiling(newbie):
    client = signed_in(newbie)
    answers = []
    for _ in range(3):
        answers.append(client.post("/api/v1/me/verify-email/resend"))
        time.sleep(1.05)  # past the one-second wait between links: only the day counts

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert "2 links today" in answers[2].json()["error"]["message"]
    assert 1 <= int(answers[2]["Retry-After"]) <= 86400
    assert len(mail.outbox) == 2


def test_resend_from_the_portal_and_for_a_verified_user(newbie, bob):
    client = signed_in(newbie)

    sent = client.post("/dashboard/verify-email/", follow=True)
    already = signed_in(bob).post("/api/v1/me/verify-email/resend")

    assert "We sent a link to newbie@example.com" in sent.content.decode()
    assert [m.to for m in mail.outbox] == [["newbie@example.com"]]
    assert already.status_code == 409
    assert already.json()["error"]["code"] == "email_already_verified"


def test_a_key_may_ask_for_a_new_link_with_read_scope_only(newbie, api):
    from accounts.services import user_mark_email_verified

    # a key minted before the address changed (keys of unverified users predate the rule)
    user_mark_email_verified(user=newbie)
    reader, inferer = api(newbie, scopes=["read"]), api(newbie, scopes=["infer"])
    User.objects.filter(pk=newbie.pk).update(email="newbie.moved@example.com")

    assert inferer.post("/api/v1/me/verify-email/resend").status_code == 403
    assert reader.post("/api/v1/me/verify-email/resend").status_code == 202
    assert mail.outbox[-1].to == ["newbie.moved@example.com"]


def test_a_mail_server_that_refuses_is_a_503_and_the_account_stays(db, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    client = Client()

    signed_up = client.post(
        "/signup/",
        {"email": "yan@example.com", "password": "plum orbit lantern 7"},
        REMOTE_ADDR="198.51.100.21",
        follow=True,
    )
    resend = client.post("/api/v1/me/verify-email/resend")

    assert signed_up.status_code == 200
    assert "could not send the email" in signed_up.content.decode()
    assert User.objects.filter(email="yan@example.com", email_verified_at=None).exists()
    assert resend.status_code in (429, 503)  # the sign-up's failed send took this minute's turn


# --- the operator's console ---------------------------------------------------------------


def test_create_api_key_refuses_an_unverified_user_unless_the_operator_vouches(newbie):
    with pytest.raises(CommandError, match="--verify-email"):
        call_command("create_api_key", "newbie@example.com", stdout=StringIO())
    assert not ApiKey.objects.filter(user=newbie).exists()

    out = StringIO()
    call_command(
        "create_api_key", "newbie@example.com", "--verify-email", "--rate-limit", "30", stdout=out
    )

    newbie.refresh_from_db()
    key = ApiKey.objects.get(user=newbie)
    assert newbie.email_verified
    assert out.getvalue().strip().startswith(key.prefix)
    assert key.rate_limit_per_minute == 30


def test_createsuperuser_vouches_for_the_operators_own_address(db):
    root = User.objects.create_superuser(email="root@example.com", password="x" * 12)

    assert root.email_verified
