"""Sign-up, log-in, log-out, password change and keys in the server-rendered portal."""

import re

from django.test import Client

from accounts.models import ApiKey, ExpertProfile, User


def test_sign_up_as_expert_logs_in_and_creates_a_profile(db):
    client = Client()

    response = client.post(
        "/signup/",
        {
            "email": "Alice@Example.com",
            "display_name": "Alice",
            "password": "a long passphrase 42",
            "is_expert": "on",
        },
    )

    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    user = User.objects.get(email="alice@example.com")
    assert user.is_expert and user.is_buyer
    assert ExpertProfile.objects.filter(user=user, verified=False).exists()
    assert client.get("/dashboard/").status_code == 200


def test_sign_up_with_a_taken_email_shows_the_error(alice):
    response = Client().post(
        "/signup/", {"email": "alice@example.com", "password": "a long passphrase 42"}
    )

    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert User.objects.filter(email="alice@example.com").count() == 1


def test_weak_password_is_refused(db):
    response = Client().post("/signup/", {"email": "x@example.com", "password": "123"})

    assert response.status_code == 200
    assert not User.objects.filter(email="x@example.com").exists()


def test_log_in_log_out_and_password_change(bob):
    client = Client()
    assert client.get("/dashboard/").status_code == 302

    login = client.post(
        "/login/", {"username": "bob@example.com", "password": "correct horse battery"}
    )
    assert login.status_code == 302
    changed = client.post(
        "/password/",
        {
            "old_password": "correct horse battery",
            "new_password1": "an even longer passphrase 7",
            "new_password2": "an even longer passphrase 7",
        },
    )
    assert changed.status_code == 302
    bob.refresh_from_db()
    assert bob.check_password("an even longer passphrase 7")
    client.post("/logout/")
    assert client.get("/dashboard/").status_code == 302


def test_wrong_password_does_not_log_in(bob):
    client = Client()

    response = client.post("/login/", {"username": "bob@example.com", "password": "nope"})

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_portal_key_is_shown_once_then_revoked(bob):
    client = Client()
    client.force_login(bob)

    first = client.post("/dashboard/api-keys/", {"name": "laptop", "scopes": ["read"]})
    first = first.content.decode()
    second = client.get("/dashboard/").content.decode()

    key = ApiKey.objects.get(user=bob, name="laptop")
    assert 'data-testid="new-api-key"' in first
    assert key.prefix in first
    assert 'data-testid="new-api-key"' not in second
    client.post(f"/dashboard/api-keys/{key.id}/revoke/")
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_portal_shows_a_new_key_in_the_post_answer_and_never_stores_it(bob):
    from django.contrib.sessions.models import Session

    client = Client()
    client.force_login(bob)

    created = client.post("/dashboard/api-keys/", {"name": "laptop", "scopes": ["read"]})

    page = created.content.decode()
    plaintext = re.search(r'data-testid="new-api-key">([^<]+)<', page).group(1)
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    assert ApiKey.objects.get(user=bob, name="laptop").prefix in plaintext
    stored = [s.get_decoded() for s in Session.objects.all()]
    assert stored and all(plaintext not in str(data) for data in stored)
    assert plaintext not in client.get("/dashboard/").content.decode()


def test_portal_keys_do_not_manage_keys_unless_ticked(bob):
    client = Client()
    client.force_login(bob)

    form = client.get("/dashboard/").content.decode()

    assert re.search(r'value="read"[^>]*checked', form)
    assert not re.search(r'value="keys"[^>]*checked', form)


def test_mallory_cannot_revoke_bobs_key_from_the_portal(bob, mallory):
    from accounts.services import api_key_create

    key, _ = api_key_create(user=bob, name="b", scopes=["read"])
    client = Client()
    client.force_login(mallory)

    client.post(f"/dashboard/api-keys/{key.id}/revoke/")

    key.refresh_from_db()
    assert key.revoked_at is None


def test_carol_is_a_moderator_and_bob_is_not(carol, bob):
    assert carol.is_moderator
    assert not bob.is_moderator
    assert carol.has_perm("accounts.view_expertprofile")
    assert not carol.has_perm("accounts.change_expertprofile")  # verify via the audited action


def test_me_reports_roles(alice, api):
    body = api(alice).get("/api/v1/me").json()

    assert body["is_expert"] is True
    assert body["expert_verified"] is False
    assert body["is_moderator"] is False
