"""Deploy checks: `check --deploy`, security headers on every page, log-in throttling,
password rules, session fixation.

Pages are every GET row of the authorization matrix, requested as anonymous and as a
signed-in owner against the fixture world (tests/hardening/world.py).
"""

import json
import os
import re
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.test import Client, override_settings

from accounts.models import User
from tests.hardening.authz_matrix import MATRIX
from tests.hardening.test_authorization_matrix import _text, concrete_path
from tests.hardening.world import PASSWORD

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
    "SECRET_KEY": "k" + b64encode(os.urandom(48)).decode(),
    "ALLOWED_HOSTS": "niche.example",
    "DATABASE_URL": "postgres://niche@db.invalid:5432/niche",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "NICHE_SIGNING_KEY": b64encode(os.urandom(32)).decode(),
    "STRIPE_SECRET_KEY": "sk_live_placeholder",
    "STRIPE_WEBHOOK_SECRET": "whsec_placeholder",
    "AWS_STORAGE_BUCKET_NAME": "niche-files",
    "EMAIL_HOST": "smtp.invalid",
}
GET_PAGES = sorted(
    key.split(" ", 1)[1] for key in MATRIX if key.startswith("GET ") and key != "GET healthz"
)
INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def _production(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CI"))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env | PRODUCTION_ENV,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_check_deploy_is_clean_with_the_production_settings():
    out = _production(
        "import django, sys; django.setup(); from django.core.management import call_command;"
        "call_command('check', '--deploy', '--fail-level', 'WARNING')"
    )
    assert "no issues" in out


@pytest.fixture(scope="module")
def production_security() -> dict:
    """The production settings' security values, read from the module itself."""
    names = [
        "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
        "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
        "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER",
    ]  # fmt: skip
    out = _production(
        "import django, json; django.setup(); from django.conf import settings;"
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    values = json.loads(out.strip().splitlines()[-1])
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    return values


def _check_headers(response, where: str, *, hsts: bool) -> None:
    csp = response.get("Content-Security-Policy", "")
    directives = dict(
        ([*part.split(" ", 1), ""])[:2] for part in (p.strip() for p in csp.split(";")) if part
    )
    assert "script-src" in directives and "unsafe" not in directives["script-src"], where
    assert directives.get("frame-ancestors") == "'none'", where
    assert directives.get("object-src") == "'none'", where
    assert response.get("X-Content-Type-Options") == "nosniff", where
    assert response.get("Referrer-Policy") == "same-origin", where
    assert response.get("X-Frame-Options") == "DENY", where
    if hsts:
        assert response.get("Strict-Transport-Security", "").startswith("max-age=31536000"), where
    content_type = response.get("Content-Type", "")
    if content_type.startswith("text/html"):
        assert not INLINE_SCRIPT.search(_text(response)), f"{where}: inline <script>"


def test_security_headers_on_every_page(world, production_security):
    """Every GET page of the matrix, anonymous and signed in, over HTTPS with the
    production values: CSP without inline script, nosniff, Referrer-Policy, DENY, HSTS."""
    prod = production_security
    with override_settings(
        SECURE_HSTS_SECONDS=prod["SECURE_HSTS_SECONDS"],
        SECURE_HSTS_INCLUDE_SUBDOMAINS=prod["SECURE_HSTS_INCLUDE_SUBDOMAINS"],
        SECURE_HSTS_PRELOAD=prod["SECURE_HSTS_PRELOAD"],
    ):
        anonymous, owner = Client(HTTP_HOST="localhost"), Client(HTTP_HOST="localhost")
        owner.force_login(world.users["owner"])
        checked = 0
        for route in [*GET_PAGES, "no/such/page/", "api/docs/?script"]:
            path = concrete_path(route, world) if "?" not in route else f"/{route}"
            for name, client in (("anonymous", anonymous), ("owner", owner)):
                response = client.get(path, secure=True)
                _check_headers(response, f"{name} GET {path} {response.status_code}", hsts=True)
                checked += 1
        assert checked == 2 * (len(GET_PAGES) + 2)


def test_production_cookies_are_secure_and_http_only(production_security):
    prod = production_security
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    with override_settings(
        SESSION_COOKIE_SECURE=prod["SESSION_COOKIE_SECURE"],
        CSRF_COOKIE_SECURE=prod["CSRF_COOKIE_SECURE"],
    ):
        client = Client(HTTP_HOST="localhost")
        page = client.get("/login/", secure=True)
        csrf = page.cookies[settings.CSRF_COOKIE_NAME]
        response = client.post(
            "/login/", {"username": "erin@example.com", "password": PASSWORD}, secure=True
        )
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert response.status_code == 302
    assert csrf["secure"] and session["secure"] and session["httponly"]
    assert session["samesite"] == "Lax"


# --- log-in throttling (django-axes) -----------------------------------------------------


def _log_in(client, email, password, ip="203.0.113.7"):
    return client.post("/login/", {"username": email, "password": password}, REMOTE_ADDR=ip)


def test_repeated_failed_log_ins_lock_the_account_out_with_a_clear_message(db):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    client = Client(HTTP_HOST="localhost")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _log_in(client, "erin@example.com", "wrong guess").status_code == 200

    locked = _log_in(client, "erin@example.com", "wrong guess")
    right_password_too = _log_in(client, "erin@example.com", PASSWORD)

    for response in (locked, right_password_too):
        assert response.status_code == 429
        assert "Too many failed log-ins" in response.content.decode()
        assert "paused for 15 minutes" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # The pair (account, address) is locked: the same account from elsewhere still works.
    assert _log_in(Client(), "erin@example.com", PASSWORD, ip="198.51.100.9").status_code == 302


def test_an_administrator_lifts_a_lockout(db):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    root = User.objects.create_superuser(email="root@example.com", password=PASSWORD)
    client = Client(HTTP_HOST="localhost")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _log_in(client, "erin@example.com", "wrong guess")
    assert _log_in(client, "erin@example.com", PASSWORD).status_code == 429

    admin = Client(HTTP_HOST="localhost")
    admin.force_login(root)
    attempts = admin.get("/admin/axes/accessattempt/")
    assert attempts.status_code == 200 and "erin@example.com" in attempts.content.decode()
    call_command("axes_reset_username", "erin@example.com", verbosity=0)

    assert _log_in(client, "erin@example.com", PASSWORD).status_code == 302


def test_a_successful_log_in_clears_the_failures(db):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    client = Client(HTTP_HOST="localhost")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _log_in(client, "erin@example.com", "wrong guess")
    assert _log_in(client, "erin@example.com", PASSWORD).status_code == 302
    client.post("/logout/")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _log_in(client, "erin@example.com", "wrong guess").status_code == 200


# --- password rules and session fixation --------------------------------------------------


@pytest.mark.parametrize(
    "password, rule",
    [
        ("Sh0rt!x", "too short"),
        ("password123", "too common"),
        ("48201937561", "entirely numeric"),
        ("quentin.marsh", "too similar"),
    ],
)
def test_sign_up_refuses_a_weak_password(db, password, rule):
    response = Client(HTTP_HOST="localhost").post(
        "/signup/",
        {"email": "quentin.marsh@example.com", "display_name": "Quentin", "password": password},
    )

    assert response.status_code == 200
    assert rule in response.content.decode()
    assert not User.objects.filter(email="quentin.marsh@example.com").exists()


def test_sign_up_accepts_a_strong_password(db):
    response = Client(HTTP_HOST="localhost").post(
        "/signup/", {"email": "quentin@example.com", "password": "plum orbit lantern 7"}
    )

    assert response.status_code == 302
    assert User.objects.filter(email="quentin@example.com").exists()


def test_the_session_key_rotates_at_log_in(db):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    client = Client(HTTP_HOST="localhost")
    planted = client.session  # an attacker's session id, fixed in the victim's browser
    planted["seen"] = True
    planted.save()
    client.cookies[settings.SESSION_COOKIE_NAME] = planted.session_key

    assert _log_in(client, "erin@example.com", PASSWORD).status_code == 302

    new_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert new_key != planted.session_key
    assert not Session.objects.filter(session_key=planted.session_key).exists()
    assert Session.objects.get(session_key=new_key).get_decoded()["_auth_user_id"]
