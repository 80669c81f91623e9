"""Locust users for the load run (test_load.py starts `locust --headless` with one class).

Settings come from the environment the test sets: LOAD_* keys, slugs and ids; no user
waits between calls (each client sends its next request as soon as it has an answer).
Every status is counted per minute window into LOAD_COUNTS_FILE, so the test can hold
the rate limiter's admissions against its limit.
"""

import collections
import hashlib
import hmac
import json
import os
import random
import time
import uuid

from locust import HttpUser, events, task

ENV = os.environ
_counts: collections.Counter = collections.Counter()


@events.request.add_listener
def _count(response=None, **_kwargs):
    status = getattr(response, "status_code", 0) or 0
    _counts[f"{int(time.time() // 60)}:{status}"] += 1


@events.quitting.add_listener
def _dump(**_kwargs):
    if path := ENV.get("LOAD_COUNTS_FILE"):
        with open(path, "w") as handle:
            json.dump(dict(_counts), handle)


def expect(response, *statuses: int) -> None:
    """Anything but `statuses` is a failure (locust counts it in the errors)."""
    if response.status_code in statuses:
        response.success()
    else:
        response.failure(f"status {response.status_code}: {response.text[:200]}")


class CatalogueUser(HttpUser):
    """An anonymous visitor: the catalogue API and its portal pages."""

    @task(3)
    def api_catalogue(self):
        with self.client.get("/api/v1/listings", catch_response=True) as r:
            expect(r, 200)

    @task(2)
    def api_listing(self):
        slug = random.choice(ENV["LOAD_SLUGS"].split(","))
        with self.client.get(f"/api/v1/listings/{slug}", name="/api/v1/listings/[slug]",
                             catch_response=True) as r:  # fmt: skip
            expect(r, 200)

    @task(1)
    def portal_catalogue(self):
        with self.client.get("/catalogue/", catch_response=True) as r:
            expect(r, 200)

    @task(1)
    def portal_listing(self):
        slug = random.choice(ENV["LOAD_SLUGS"].split(","))
        with self.client.get(f"/catalogue/{slug}/", name="/catalogue/[slug]/",
                             catch_response=True) as r:  # fmt: skip
            expect(r, 200)


class StudioUser(HttpUser):
    """An expert reading their studio through the API with a read-scoped key."""

    def on_start(self):
        self.client.headers["Authorization"] = f"Bearer {ENV['LOAD_STUDIO_KEY']}"
        self.version = ENV["LOAD_VERSION_ID"]
        self.job = ENV["LOAD_JOB_ID"]

    @task
    def datasets(self):
        with self.client.get("/api/v1/datasets", catch_response=True) as r:
            expect(r, 200)

    @task
    def jobs(self):
        with self.client.get("/api/v1/fine_tuning/jobs", catch_response=True) as r:
            expect(r, 200)

    @task
    def job_events(self):
        with self.client.get(f"/api/v1/fine_tuning/jobs/{self.job}/events",
                             name="/api/v1/fine_tuning/jobs/[id]/events",
                             catch_response=True) as r:  # fmt: skip
            expect(r, 200)

    @task
    def models(self):
        with self.client.get("/api/v1/models", catch_response=True) as r:
            expect(r, 200)

    @task
    def model_evaluation(self):
        with self.client.get(f"/api/v1/models/{self.version}/evaluation",
                             name="/api/v1/models/[id]/evaluation",
                             catch_response=True) as r:  # fmt: skip
            expect(r, 200)


class InferenceUser(HttpUser):
    """A buyer's service calling predict on a served specialist."""

    def on_start(self):
        self.client.headers["Authorization"] = f"Bearer {ENV['LOAD_INFER_KEY']}"

    @task
    def predict(self):
        text = f"ticket {random.randrange(10**6)}: my refund has not arrived"
        with self.client.post(f"/api/v1/models/{ENV['LOAD_SERVED_SLUG']}/predict",
                              name="/api/v1/models/[slug]/predict", json={"inputs": [text]},
                              catch_response=True) as r:  # fmt: skip
            expect(r, 200)


class RateLimitedUser(HttpUser):
    """One of many clients sharing one key: 200 until the minute's limit, then 429."""

    def on_start(self):
        self.client.headers["Authorization"] = f"Bearer {ENV['LOAD_RATE_KEY']}"

    @task
    def predict(self):
        with self.client.post(f"/api/v1/models/{ENV['LOAD_SERVED_SLUG']}/predict",
                              name="/api/v1/models/[slug]/predict (shared key)",
                              json={"inputs": ["where is my parcel"]},
                              catch_response=True) as r:  # fmt: skip
            expect(r, 200, 429)


def _signature(payload: bytes, secret: str) -> str:
    # Stripe's scheme, as tests/billing/stripe_server.sign_payload writes it (not imported:
    # that module pulls pytest and aiohttp into a gevent process).
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookUser(HttpUser):
    """Stripe delivering signed events; one in five is a redelivery of an earlier one."""

    def on_start(self):
        self.sent: list[bytes] = []

    @task
    def deliver(self):
        if self.sent and random.random() < 0.2:
            body = random.choice(self.sent)
        else:
            event = {
                "id": f"evt_load_{uuid.uuid4().hex}", "object": "event",
                "type": "customer.created", "created": int(time.time()),
                "data": {"object": {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer"}},
            }  # fmt: skip
            body = json.dumps(event).encode()
            self.sent.append(body)
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": _signature(body, ENV["LOAD_WEBHOOK_SECRET"]),
        }
        with self.client.post("/api/v1/billing/stripe/webhook", data=body, headers=headers,
                              catch_response=True) as r:  # fmt: skip
            expect(r, 200)
