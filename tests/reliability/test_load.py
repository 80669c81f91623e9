"""The load run: Locust (headless, a subprocess) against gunicorn on loopback, bounded in
time, one scenario after the other: the catalogue, the studio's read endpoints, inference
on a served specialist (a real LoRA adapter on a real inference worker) and Stripe
webhooks (correctly signed). Each reports req/s, p50/p95/p99 and errors; the goal is 0
errors at the rate it sustains. Then 50 clients share one key whose own rate limit is
RATE_LIMIT per minute: the admissions per minute window must be within 5% of it.

Figures go to var/reliability/load.json (docs/reliability.md is generated from it).
Collected only with NICHE_LOAD=1 (`make reliability`); LOAD_SECONDS (default 20) bounds
each scenario.
"""

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings

from accounts.services import api_key_create
from billing.models import OfferKind, StripeEvent, UsageRecord, UsageStatus
from marketplace.settings import base as base_settings
from tests.billing.conftest import make_active_licence, make_offer
from tests.billing.stripe_server import WEBHOOK_SECRET
from tests.integration.conftest import ROOT
from tests.integration.specialists import InferenceWorker, publish_specialist
from tests.integration.web import Gunicorn
from tests.listings.conftest import make_listing
from training_worker.models import FineTuningJob, ModelVersion

pytestmark = [pytest.mark.integration]

SECONDS = int(os.environ.get("LOAD_SECONDS", "20"))
USERS = int(os.environ.get("LOAD_USERS", "10"))
RATE_CLIENTS = 50
RATE_LIMIT = 30  # per minute, for the rate-limit scenario only (admitted calls run the model)
OUT = ROOT / "var" / "reliability" / "load.json"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def run_locust(user_class: str, url: str, users: int, env: dict, tmp_path: Path) -> dict:
    """One headless run; returns its aggregated figures and the per-window status counts."""
    prefix = tmp_path / user_class
    counts_file = tmp_path / f"{user_class}-counts.json"
    completed = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), user_class, "--headless",
            "--host", url, "--users", str(users), "--spawn-rate", str(users),
            "--run-time", f"{SECONDS}s", "--stop-timeout", "10", "--csv", str(prefix),
            "--only-summary", "--exit-code-on-error", "0",
        ],
        cwd=ROOT, env=env | {"LOAD_COUNTS_FILE": str(counts_file)}, capture_output=True,
        text=True, timeout=SECONDS + 120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as handle:
        rows = list(csv.DictReader(handle))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    failures = Path(f"{prefix}_failures.csv").read_text().splitlines()[1:]
    return {
        "users": users,
        "seconds": SECONDS,
        "requests": int(total["Request Count"]),
        "errors": int(total["Failure Count"]),
        "req_per_s": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
        "p99_ms": float(total["99%"]),
        "max_ms": round(float(total["Max Response Time"]), 1),
        "endpoints": {
            row["Name"]: int(row["Request Count"]) for row in rows if row["Name"] != "Aggregated"
        },
        "failure_samples": failures[:5],
        "status_by_window": json.loads(counts_file.read_text()) if counts_file.exists() else {},
    }


@pytest.fixture
def marketplace_data(alice, bob, carol, shipped_base_models, tmp_path):
    """A catalogue of 12 listings, one of them a served specialist, bob's licence, keys."""
    served = publish_specialist(alice, carol, folder=tmp_path)
    others = [
        make_listing(alice, moderator=carol, title=f"Specialist number {n}") for n in range(11)
    ]
    licence = make_active_licence(
        bob, make_offer(served, OfferKind.SUBSCRIPTION, included_calls=10_000_000)
    )
    version = ModelVersion.objects.filter(owner=alice).order_by("created_at").first()

    def key(user, scopes, **limits) -> tuple[str, str]:
        row, plaintext = api_key_create(user=user, name=uuid.uuid4().hex, scopes=scopes, **limits)
        return str(row.pk), plaintext

    # bob's account keeps the servers' huge limit; this key has its own, RATE_LIMIT a minute
    rate_key_id, rate_key = key(bob, ["infer"], rate_limit_per_minute=RATE_LIMIT)
    return {
        "LOAD_SLUGS": ",".join([served.slug] + [listing.slug for listing in others]),
        "LOAD_SERVED_SLUG": served.slug,
        "LOAD_STUDIO_KEY": key(alice, ["read"])[1],
        "LOAD_VERSION_ID": str(version.pk),
        "LOAD_JOB_ID": str(FineTuningJob.objects.filter(owner=alice).first().pk),
        "LOAD_INFER_KEY": key(bob, ["infer"])[1],
        "LOAD_RATE_KEY": rate_key,
        "rate_key_id": rate_key_id,
        "LOAD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "licence_id": str(licence.pk),
    }


def test_load_on_loopback(worker_env, marketplace_data, tmp_path):
    from marketplace.celery import app

    data = marketplace_data
    web_env = worker_env | {
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SERVING_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    locust_env = os.environ | {k: v for k, v in data.items() if k.startswith("LOAD_")}
    engine = InferenceWorker(worker_env).wait_ready()
    results: dict = {}
    try:
        web = Gunicorn(web_env, "load").wait_ready()
        try:
            warm = requests.post(
                f"{web.url}/api/v1/models/{data['LOAD_SERVED_SLUG']}/predict",
                json={"inputs": ["warm-up"]},
                headers={"Authorization": f"Bearer {data['LOAD_INFER_KEY']}"},
                timeout=60,
            )
            assert warm.status_code == 200, warm.text
            predict = f"/api/v1/models/{data['LOAD_SERVED_SLUG']}/predict"
            for scenario, user_class in (
                ("catalogue", "CatalogueUser"),
                ("studio_reads", "StudioUser"),
                ("inference", "InferenceUser"),
                ("webhooks", "WebhookUser"),
            ):
                results[scenario] = run_locust(user_class, web.url, USERS, locust_env, tmp_path)
                results[scenario].pop("status_by_window")
        finally:
            web.stop()
        answered = web.answered("POST", predict, 200)

        # The rate limiter: a fresh server, 50 clients on the key whose limit is RATE_LIMIT
        store = redis.Redis.from_url(settings.REDIS_URL)
        web = Gunicorn(web_env, "rate")
        web.wait_ready()
        try:
            rate = run_locust("RateLimitedUser", web.url, RATE_CLIENTS, locust_env, tmp_path)
        finally:
            web.stop()
        answered += web.answered("POST", predict, 200)
        admitted = {
            key.decode().rsplit(":", 1)[1]: int(store.get(key))
            # the server's windows, under the settings' own prefix (not this test's)
            for key in store.scan_iter(
                f"{base_settings.RATE_LIMIT_KEY_PREFIX}:serving:rate:key:{data['rate_key_id']}:*"
            )
            if store.get(key) is not None
        }
    finally:
        engine.stop()
        app.control.purge()  # the webhook events' processing tasks: no worker ran them

    windows = rate.pop("status_by_window")
    ok = sum(n for k, n in windows.items() if k.endswith(":200"))
    refused = sum(n for k, n in windows.items() if k.endswith(":429"))
    # A window the limit filled: the clients got at least one 429 each in it (a few 429s
    # that reach a client just after the minute turned count in the next one).
    full_windows = {
        k.split(":")[0] for k, n in windows.items() if k.endswith(":429") and n >= RATE_CLIENTS
    }
    rate.update(
        limit_per_minute=RATE_LIMIT,
        clients=RATE_CLIENTS,
        answered_200=ok,
        refused_429=refused,
        admitted_by_window=admitted,
        full_windows=sorted(full_windows),
    )
    results["rate_limit"] = rate
    delivered = StripeEvent.objects.filter(id__startswith="evt_load_").count()
    results["webhooks"]["events_stored"] = delivered
    ledger = UsageRecord.objects.filter(licence_id=data["licence_id"])
    results["inference"]["ledger_rows"] = ledger.count()
    results["inference"]["answered_200_by_server"] = answered
    # what else the machine was doing: the figures are only as good as it was idle
    results["machine"] = {"cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(json.dumps(results, indent=2, sort_keys=True))

    # 0 errors at the sustained rate, in every scenario
    for scenario in ("catalogue", "studio_reads", "inference", "webhooks"):
        figures = results[scenario]
        assert figures["requests"] > 0, scenario
        assert figures["errors"] == 0, (scenario, figures["failure_samples"])
    # every call the server answered 200 (its access log: the warm-up, both runs, also
    # those still in flight when locust stopped counting) has one ledger row, and no
    # refused call wrote one
    assert ledger.count() == ledger.filter(status=UsageStatus.OK).count() == answered
    # the rate limiter: every minute it refused calls in, it admitted its limit (±5 %)
    assert rate["errors"] == 0, rate["failure_samples"]
    assert full_windows, "the 50 clients never reached the limit"
    for window in full_windows:
        assert abs(admitted[window] - RATE_LIMIT) <= 0.05 * RATE_LIMIT, (window, admitted)
    assert ok <= sum(admitted.values())  # no 200 without an admission
