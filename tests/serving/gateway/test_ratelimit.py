"""The per-key rate limit is one atomic step in Redis: concurrency cannot pass it."""

import threading
import uuid

import pytest

from serving.errors import RateLimited
from serving.ratelimit import WINDOW_SECONDS, rate_limit_admit

CLIENTS = 50
CALLS_EACH = 3
LIMIT = 40


def test_fifty_concurrent_clients_get_no_more_than_the_limit(real_redis):
    # Given a key allowed 40 calls a minute and 50 clients that each try 3 at once
    subject = f"key:{uuid.uuid4()}"
    now = 1_900_000_000.0  # one fixed window, whatever the clock says mid-test
    start = threading.Barrier(CLIENTS)
    admitted, refused = [], []

    def client():
        start.wait()
        for _ in range(CALLS_EACH):
            try:
                admitted.append(rate_limit_admit(subject=subject, limit=LIMIT, now=now))
            except RateLimited as exc:
                refused.append(exc.retry_after)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly the limit got through, each with its own place in the count,
    # the rest were told to come back, and Redis counted only the admitted calls
    assert len(admitted) == LIMIT
    assert sorted(decision.used for decision in admitted) == list(range(1, LIMIT + 1))
    assert len(refused) == CLIENTS * CALLS_EACH - LIMIT
    assert all(1 <= seconds <= WINDOW_SECONDS for seconds in refused)
    window = int(now // WINDOW_SECONDS)
    assert int(real_redis.get(f"serving:rate:{subject}:{window}")) == LIMIT


def test_the_next_window_admits_again_and_retry_after_counts_down_to_it(real_redis):
    subject = f"key:{uuid.uuid4()}"
    window_start = 1_900_000_020.0 - 1_900_000_020.0 % WINDOW_SECONDS
    rate_limit_admit(subject=subject, limit=1, now=window_start + 10)

    with pytest.raises(RateLimited) as refused:
        rate_limit_admit(subject=subject, limit=1, now=window_start + 45.5)

    assert refused.value.retry_after == 15
    assert refused.value.status == 429
    assert rate_limit_admit(subject=subject, limit=1, now=window_start + WINDOW_SECONDS).used == 1


def test_keys_have_separate_counters(real_redis):
    bob_key, mallory_key = f"key:{uuid.uuid4()}", f"key:{uuid.uuid4()}"
    rate_limit_admit(subject=mallory_key, limit=1)

    with pytest.raises(RateLimited):
        rate_limit_admit(subject=mallory_key, limit=1)

    assert rate_limit_admit(subject=bob_key, limit=1).used == 1
