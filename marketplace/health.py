"""`GET /healthz`: database, broker and at least one live worker.

Anyone gets `{"status": "ok" | "degraded"}` with 200 or 503. Which check failed, its
error text and the worker host names go only to staff sessions and to callers that
send `Authorization: Bearer <HEALTHZ_TOKEN>`: they map the deployment for an attacker.
"""

import hmac
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse

from marketplace.celery import app as celery_app


def _check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"ok": True, "vendor": connection.vendor}


def _check_broker() -> dict:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"ok": True}


def _check_workers() -> dict:
    replies = celery_app.control.ping(timeout=1.0) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return {"ok": False, "error": "no worker answered a ping within 1 s", "workers": []}
    return {"ok": True, "workers": names}


def _may_see_details(request) -> bool:
    token = settings.HEALTHZ_TOKEN
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    try:  # loading a session needs the database, which may be the part that is down
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)
    except DatabaseError:
        return False


def healthz(request):
    checks: dict[str, dict] = {}
    for name, check in (
        ("database", _check_database),
        ("broker", _check_broker),
        ("workers", _check_workers),
    ):
        started = time.monotonic()
        try:
            result = check()
        except Exception as exc:  # a health check reports every failure, whatever it is
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        result["ms"] = round((time.monotonic() - started) * 1000, 1)
        checks[name] = result
        if name == "broker" and not result["ok"]:
            checks["workers"] = {"ok": False, "error": "broker unreachable", "ms": 0.0}
            break
    healthy = all(c["ok"] for c in checks.values())
    body: dict = {"status": "ok" if healthy else "degraded"}
    if _may_see_details(request):
        body["down"] = [name for name, c in checks.items() if not c["ok"]]
        body["checks"] = checks
    return JsonResponse(body, status=200 if healthy else 503)
