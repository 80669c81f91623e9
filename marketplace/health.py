"""`GET /healthz`: database, broker and at least one live worker."""

import time

from django.db import connection
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
    down = [name for name, c in checks.items() if not c["ok"]]
    body = {"status": "ok" if healthy else "down", "down": down, "checks": checks}
    return JsonResponse(body, status=200 if healthy else 503)
