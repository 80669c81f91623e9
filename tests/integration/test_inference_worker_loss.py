"""Serving over HTTP with real inference worker processes: a worker killed (SIGKILL)
mid-batch gives every waiting request a 503 or 504 within the timeout, never a hang,
and bills none of them; and the ledger holds exactly one billed row per answered call.

alice sells a specialist whose version is a real LoRA adapter; bob calls it with his
API key against a live server; the engine is a separate worker process, as in
production.
"""

import threading
import time

import pytest
import requests

from accounts.services import api_key_create
from billing.models import LicenceUsagePeriod, OfferKind, UsageRecord, UsageStatus
from tests.billing.conftest import make_active_licence, make_offer
from tests.integration.specialists import publish_specialist

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_SECONDS = 8  # SERVING_TIMEOUT_SECONDS on the live server in these tests
# What a request may take beyond the timeout: the gateway's last liveness check (a
# control broadcast) and the settling of its ledger row.
SLACK_SECONDS = 3


@pytest.fixture
def serving_timeout(settings):
    settings.SERVING_TIMEOUT_SECONDS = TIMEOUT_SECONDS
    return TIMEOUT_SECONDS


@pytest.fixture
def triage(alice, carol, shipped_base_models, tmp_path):
    """alice's published classifier, a real adapter of minilm-l6."""
    return publish_specialist(alice, carol, folder=tmp_path)


def bob_key(bob) -> str:
    _, plaintext = api_key_create(user=bob, name="bob's service", scopes=["infer"])
    return plaintext


class Caller:
    """Concurrent HTTP calls to predict, each timed; the test never waits forever on one
    (requests' own timeout is far past what the gateway promises)."""

    def __init__(self, url: str, key: str):
        self.url = url
        self.key = key
        self.answers: list[tuple[int, float, dict]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def call(self, text: str) -> tuple[int, float, dict]:
        started = time.monotonic()
        response = requests.post(
            self.url,
            json={"inputs": [text]},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=TIMEOUT_SECONDS * 4,
        )
        answer = (response.status_code, time.monotonic() - started, dict(response.headers))
        with self._lock:
            self.answers.append(answer)
        return answer

    def start(self, count: int) -> None:
        for n in range(count):
            thread = threading.Thread(target=self.call, args=(f"ticket {n}: refund please",))
            thread.start()
            self._threads.append(thread)

    def join(self) -> list[tuple[int, float, dict]]:
        for thread in self._threads:
            thread.join(timeout=TIMEOUT_SECONDS * 5)
        assert not any(t.is_alive() for t in self._threads), "a request hung"
        return self.answers


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_batch_gives_the_waiting_requests_503_never_a_hang(
    live_server, serving_timeout, inference_workers, bob, triage
):
    # Given bob's licence and a worker whose batches stay open 4 s, so the requests below
    # all sit in one batch when the worker dies
    licence = make_active_licence(bob, make_offer(triage, OfferKind.SUBSCRIPTION))
    caller = Caller(f"{live_server.url}/api/v1/models/{triage.slug}/predict", bob_key(bob))
    doomed = inference_workers(SERVING_BATCH_MAX_WAIT_MS="4000")
    status, _, headers = caller.call("warm-up: the adapter loads")
    assert status == 200
    warm_up_id = headers["X-Niche-Request-Id"]

    # When six calls are waiting in the worker's batch and the worker is SIGKILLed
    caller.answers.clear()
    caller.start(6)
    wait_for(lambda: doomed.received() >= 7, 30, "the worker to take all six calls")
    doomed.kill()
    answers = caller.join()

    # Then each gets a clean 503 or 504 within the timeout, none hangs
    assert len(answers) == 6
    for status, seconds, _ in answers:
        assert status in (503, 504), status
        assert seconds < TIMEOUT_SECONDS + SLACK_SECONDS, seconds
    # and none of them is billed: only the warm-up is served in the ledger and counted
    served = UsageRecord.objects.filter(licence=licence, status=UsageStatus.OK)
    assert list(served.values_list("idempotency_key", flat=True)) == [warm_up_id]
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 1
    # (the gateway writes a row before the engine runs and settles it `error`: not billed)
    unanswered = UsageRecord.objects.filter(licence=licence).exclude(idempotency_key=warm_up_id)
    assert set(unanswered.values_list("status", flat=True)) <= {UsageStatus.ERROR}


def test_ledger_rows_match_answered_calls_one_to_one(
    live_server, serving_timeout, inference_workers, bob, triage
):
    # Given bob's subscription with 10 calls left this month and a running worker
    licence = make_active_licence(
        bob, make_offer(triage, OfferKind.SUBSCRIPTION, included_calls=10)
    )
    inference_workers()
    caller = Caller(f"{live_server.url}/api/v1/models/{triage.slug}/predict", bob_key(bob))

    # When 16 calls race for them
    caller.start(16)
    answers = caller.join()

    # Then 10 are answered and 6 refused for the quota
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 10 + [429] * 6
    answered_ids = {h["X-Niche-Request-Id"] for status, _, h in answers if status == 200}
    # and the ledger holds one billed row per answered call, keyed by its request id
    rows = UsageRecord.objects.filter(licence=licence)
    assert set(rows.values_list("idempotency_key", flat=True)) == answered_ids
    assert rows.count() == 10
    assert set(rows.values_list("status", flat=True)) == {UsageStatus.OK}
    assert LicenceUsagePeriod.objects.get(licence=licence).calls == 10
