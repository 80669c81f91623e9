"""API keys: created once-visible, hashed at rest, scoped, revocable."""

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.errors import ApiKeyLimitReached
from accounts.models import ApiKey
from accounts.services import api_key_create, hash_api_key

KEY_MANAGER = ["read", "train", "infer", "keys"]


def test_bob_creates_a_key_and_sees_the_secret_once(bob, api):
    client = api(bob, scopes=KEY_MANAGER)

    created = client.post(
        "/api/v1/api_keys", {"name": "ci", "scopes": ["read", "infer"]}, format="json"
    )

    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("nk_")
    assert body["scopes"] == ["infer", "read"]
    row = ApiKey.objects.get(pk=body["id"])
    assert row.key_hash == hash_api_key(body["key"])
    assert body["key"] not in (row.prefix, row.key_hash)
    assert body["key"].startswith(row.prefix)
    listed = client.get("/api/v1/api_keys").json()
    assert next(k["id"] for k in listed["data"]) == body["id"]
    assert all("key" not in k for k in listed["data"])


def test_a_new_key_authenticates_and_records_last_use(bob, api):
    key, plaintext = api_key_create(user=bob, name="script", scopes=["read"])
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    response = client.get("/api/v1/me")

    assert response.status_code == 200
    assert response.json()["email"] == "bob@example.com"
    assert response.json()["auth"] == {
        "method": "api_key",
        "key_id": str(key.id),
        "scopes": ["read"],
    }
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_revoked_key_gets_401_in_the_error_contract(bob, api):
    key, plaintext = api_key_create(user=bob, name="old", scopes=["read"])
    owner = api(bob, scopes=KEY_MANAGER)
    assert owner.delete(f"/api/v1/api_keys/{key.id}").status_code == 200
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    response = client.get("/api/v1/me")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    assert set(response.json()["error"]) == {"code", "message", "fields"}
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_at <= timezone.now()


def test_wrong_key_and_missing_key_get_401(bob, api):
    _, plaintext = api_key_create(user=bob, name="k", scopes=["read"])
    tampered = plaintext[:-4] + ("aaaa" if not plaintext.endswith("aaaa") else "bbbb")
    client = api()

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tampered}")
    assert client.get("/api/v1/me").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Bearer nk_unknown_secret")
    assert client.get("/api/v1/me").status_code == 401
    client.credentials()
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Bearer"


def test_suspended_users_keys_stop_working(bob, api):
    client = api(bob)
    bob.is_active = False
    bob.save()

    assert client.get("/api/v1/me").status_code == 401


def test_key_without_scope_gets_403(bob, api):
    client = api(bob, scopes=["infer"])

    response = client.get("/api/v1/me")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "read" in response.json()["error"]["message"]


def test_unknown_scope_is_422(bob, api):
    client = api(bob, scopes=KEY_MANAGER)

    response = client.post("/api/v1/api_keys", {"name": "x", "scopes": ["admin"]}, format="json")

    assert response.status_code == 422
    assert "scopes" in response.json()["error"]["fields"]
    assert ApiKey.objects.filter(user=bob, name="x").count() == 0


def test_mallory_cannot_see_or_revoke_bobs_keys(bob, mallory, api):
    bobs_key, _ = api_key_create(user=bob, name="bob's", scopes=["read"])
    client = api(mallory, scopes=KEY_MANAGER)

    listed = client.get("/api/v1/api_keys").json()["data"]
    revoke = client.delete(f"/api/v1/api_keys/{bobs_key.id}")

    assert str(bobs_key.id) not in [k["id"] for k in listed]
    assert revoke.status_code == 404
    assert revoke.json()["error"]["code"] == "api_key_not_found"
    bobs_key.refresh_from_db()
    assert bobs_key.revoked_at is None


def test_key_list_is_cursor_paged(bob, api):
    client = api(bob)  # creates one key
    for n in range(4):
        api_key_create(user=bob, name=f"k{n}", scopes=["read"])

    first = client.get("/api/v1/api_keys?limit=2").json()
    second = client.get(f"/api/v1/api_keys?limit=2&after={first['last_id']}").json()
    third = client.get(f"/api/v1/api_keys?limit=2&after={second['last_id']}").json()

    assert first["has_more"] and second["has_more"] and not third["has_more"]
    ids = [k["id"] for page in (first, second, third) for k in page["data"]]
    assert len(ids) == len(set(ids)) == 5
    assert first["first_id"] == ids[0]


def test_create_api_key_command_prints_a_working_key(bob, api):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_key", "bob@example.com", "--scopes", "read,infer", stdout=out)
    plaintext = out.getvalue().strip()
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    assert plaintext.startswith("nk_")
    assert client.get("/api/v1/me").status_code == 200
    assert ApiKey.objects.get(user=bob).scopes == ["infer", "read"]


def test_mallory_with_a_stolen_infer_key_cannot_mint_or_revoke_keys(bob, api):
    bobs_ci_key, _ = api_key_create(user=bob, name="ci", scopes=["read", "train"])
    stolen = api(bob, scopes=["infer"])

    minted = stolen.post(
        "/api/v1/api_keys", {"name": "mine", "scopes": ["read", "train", "infer"]}, format="json"
    )
    revoked = stolen.delete(f"/api/v1/api_keys/{bobs_ci_key.id}")

    assert minted.status_code == 403
    assert minted.json()["error"]["code"] == "permission_denied"
    assert "'keys'" in minted.json()["error"]["message"]
    assert revoked.status_code == 403
    assert not ApiKey.objects.filter(user=bob, name="mine").exists()
    bobs_ci_key.refresh_from_db()
    assert bobs_ci_key.revoked_at is None


def test_a_key_manager_key_cannot_mint_a_key_wider_than_itself(bob, api):
    deployer = api(bob, scopes=["keys", "infer"])

    wider = deployer.post(
        "/api/v1/api_keys", {"name": "wider", "scopes": ["infer", "train"]}, format="json"
    )
    by_default = deployer.post("/api/v1/api_keys", {"name": "default"}, format="json")
    narrower = deployer.post(
        "/api/v1/api_keys", {"name": "narrower", "scopes": ["infer"]}, format="json"
    )

    assert wider.status_code == 403
    assert wider.json()["error"]["code"] == "scope_exceeds_caller"
    assert wider.json()["error"]["fields"] == {"scopes": ["Not held by this key: train"]}
    assert by_default.status_code == 403
    assert narrower.status_code == 201
    assert narrower.json()["scopes"] == ["infer"]
    assert sorted(ApiKey.objects.filter(user=bob).values_list("name", flat=True)) == [
        "narrower",
        "test",
    ]


def test_a_narrow_key_manager_cannot_revoke_a_wider_key(bob, api):
    wide, _ = api_key_create(user=bob, name="wide", scopes=["read", "train", "infer"])
    narrow, _ = api_key_create(user=bob, name="narrow", scopes=["infer"])
    deployer = api(bob, scopes=["keys", "infer"])

    refused = deployer.delete(f"/api/v1/api_keys/{wide.id}")
    allowed = deployer.delete(f"/api/v1/api_keys/{narrow.id}")

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "scope_exceeds_caller"
    assert allowed.status_code == 200
    wide.refresh_from_db()
    narrow.refresh_from_db()
    assert wide.revoked_at is None
    assert narrow.revoked_at is not None


def test_a_signed_in_session_may_mint_any_key_including_a_key_manager(bob, api):
    client = api()
    client.force_login(bob)

    response = client.post(
        "/api/v1/api_keys", {"name": "admin", "scopes": ["keys", "read"]}, format="json"
    )

    assert response.status_code == 201
    assert ApiKey.objects.get(user=bob, name="admin").scopes == ["keys", "read"]


def test_new_keys_do_not_manage_keys_unless_asked(bob, api):
    client = api()
    client.force_login(bob)

    response = client.post("/api/v1/api_keys", {"name": "plain"}, format="json")

    assert response.status_code == 201
    assert response.json()["scopes"] == ["infer", "read", "train"]


# --- how many keys, and how fast each may call -------------------------------------------


@override_settings(API_KEYS_MAX_PER_USER=3)
def test_a_user_holds_at_most_the_cap_of_live_keys_and_revoking_frees_a_place(bob, api):
    client = api()
    client.force_login(bob)
    made = [client.post("/api/v1/api_keys", {"name": f"k{n}"}, format="json") for n in range(3)]

    refused = client.post("/api/v1/api_keys", {"name": "one too many"}, format="json")

    assert [r.status_code for r in made] == [201, 201, 201]
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "api_key_limit_reached"
    assert refused.json()["error"]["fields"] == {"api_keys": ["At most 3 live keys."]}
    assert not ApiKey.objects.filter(user=bob, name="one too many").exists()

    client.delete(f"/api/v1/api_keys/{made[0].json()['id']}")
    again = client.post("/api/v1/api_keys", {"name": "replacement"}, format="json")

    assert again.status_code == 201
    assert ApiKey.objects.filter(user=bob, revoked_at__isnull=True).count() == 3
    assert ApiKey.objects.filter(user=bob).count() == 4  # the revoked one stays, listed


@override_settings(API_KEYS_MAX_PER_USER=2)
def test_the_portal_and_the_console_meet_the_same_cap(bob):
    from io import StringIO

    from django.core.management import CommandError, call_command
    from django.test import Client

    client = Client()
    client.force_login(bob)
    for n in range(2):
        client.post("/dashboard/api-keys/", {"name": f"k{n}", "scopes": ["read"]})

    page = client.post(
        "/dashboard/api-keys/", {"name": "k2", "scopes": ["read"]}, follow=True
    ).content.decode()

    assert "You already hold 2 live API keys" in page
    assert 'data-testid="keys-at-limit"' in page
    with pytest.raises(CommandError, match="2 live API keys"):
        call_command("create_api_key", "bob@example.com", stdout=StringIO())
    assert ApiKey.objects.filter(user=bob).count() == 2


@pytest.mark.django_db(transaction=True)
@override_settings(API_KEYS_MAX_PER_USER=5)
def test_concurrent_creations_cannot_pass_the_cap(bob):
    import threading

    from django.db import close_old_connections, connection

    if connection.vendor != "postgresql":
        pytest.skip("row locks need Postgres (SQLite serialises every write anyway)")
    start = threading.Barrier(12)
    answers = []

    def create(n):
        start.wait()
        try:
            api_key_create(user=bob, name=f"race{n}", scopes=["read"])
            answers.append("created")
        except ApiKeyLimitReached:
            answers.append("refused")
        finally:
            close_old_connections()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == ["created"] * 5 + ["refused"] * 7
    assert ApiKey.objects.filter(user=bob, revoked_at__isnull=True).count() == 5


@override_settings(SERVING_RATE_LIMIT_PER_MINUTE=100)
def test_a_key_may_carry_its_own_lower_rate_limit_never_above_the_users(bob, api):
    client = api()
    client.force_login(bob)

    lower = client.post(
        "/api/v1/api_keys", {"name": "ci", "rate_limit_per_minute": 30}, format="json"
    )
    equal = client.post(
        "/api/v1/api_keys", {"name": "all", "rate_limit_per_minute": 100}, format="json"
    )
    above = client.post(
        "/api/v1/api_keys", {"name": "greedy", "rate_limit_per_minute": 101}, format="json"
    )
    zero = client.post(
        "/api/v1/api_keys", {"name": "zero", "rate_limit_per_minute": 0}, format="json"
    )
    default = client.post("/api/v1/api_keys", {"name": "plain"}, format="json")

    assert lower.status_code == 201 and lower.json()["rate_limit_per_minute"] == 30
    assert equal.status_code == 201
    assert above.status_code == 422
    assert above.json()["error"]["code"] == "invalid_rate_limit"
    assert above.json()["error"]["fields"] == {
        "rate_limit_per_minute": ["A whole number from 1 to 100."]
    }
    assert zero.status_code == 422
    assert default.status_code == 201 and default.json()["rate_limit_per_minute"] is None
    assert ApiKey.objects.get(pk=lower.json()["id"]).rate_limit_per_minute == 30
    assert not ApiKey.objects.filter(user=bob, name__in=["greedy", "zero"]).exists()
    listed = {
        k["name"]: k["rate_limit_per_minute"] for k in client.get("/api/v1/api_keys").json()["data"]
    }
    assert listed == {"ci": 30, "all": 100, "plain": None}
