"""The rate limit is one atomic step in Redis, per user with keys under it: concurrency
cannot pass it, more keys buy no more calls, and a refused call counts nowhere."""

import threading
import uuid

import pytest

from serving.errors import RateLimited
from serving.ratelimit import WINDOW_SECONDS, RateWindow, rate_limit_admit, rate_window_key

CLIENTS = 50
CALLS_EACH = 3
LIMIT = 40
NOW = 1_900_000_000.0  # one fixed window, whatever the clock says mid-test
MINUTE = int(NOW // WINDOW_SECONDS)


def user_window(limit: int) -> RateWindow:
    return RateWindow(subject=f"user:{uuid.uuid4()}", limit=limit)


def key_window(limit: int) -> RateWindow:
    return RateWindow(subject=f"key:{uuid.uuid4()}", limit=limit)


def counted(real_redis, window: RateWindow) -> int:
    return int(real_redis.get(rate_window_key(window.subject, MINUTE)) or 0)


def hammer(windows_of_client, clients: int = CLIENTS):
    """`clients` threads, released together, each making CALLS_EACH calls."""
    start = threading.Barrier(clients)
    admitted, refused = [], []

    def client(n):
        start.wait()
        for _ in range(CALLS_EACH):
            try:
                admitted.append(rate_limit_admit(windows=windows_of_client(n), now=NOW))
            except RateLimited as exc:
                refused.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return admitted, refused


def test_fifty_concurrent_clients_get_no_more_than_the_limit(real_redis):
    # Given a user allowed 40 calls a minute and 50 clients that each try 3 at once
    user = user_window(LIMIT)

    admitted, refused = hammer(lambda n: [user])

    # Then exactly the limit got through, each with its own place in the count,
    # the rest were told to come back, and Redis counted only the admitted calls
    assert len(admitted) == LIMIT
    assert sorted(decision.used for decision in admitted) == list(range(1, LIMIT + 1))
    assert len(refused) == CLIENTS * CALLS_EACH - LIMIT
    assert all(1 <= exc.retry_after <= WINDOW_SECONDS for exc in refused)
    assert counted(real_redis, user) == LIMIT


def test_ten_keys_of_one_user_share_the_users_limit_under_concurrency(real_redis):
    # Given bob allowed 40 calls a minute, and 50 clients spread over 10 of his keys
    # (none with a limit of its own)
    bob = user_window(LIMIT)

    admitted, refused = hammer(lambda n: [bob])  # the gateway: the user's window alone

    # Then the keys together got the user's 40, not 10 x 40
    assert len(admitted) == LIMIT
    assert counted(real_redis, bob) == LIMIT
    assert {exc.fields["limited_by"][0] for exc in refused} == {"user"}


def test_keys_with_their_own_limits_stay_under_the_users_under_concurrency(real_redis):
    # Given bob allowed 40 a minute, and five keys allowed 15 each (75 together)
    bob = user_window(LIMIT)
    keys = [key_window(15) for _ in range(5)]

    admitted, refused = hammer(lambda n: [bob, keys[n % 5]])

    # Then no key went over its 15, all of them together not over bob's 40, and the
    # counters hold exactly what was admitted
    assert len(admitted) == LIMIT
    per_key = [counted(real_redis, key) for key in keys]
    assert all(n <= 15 for n in per_key) and sum(per_key) == LIMIT
    assert counted(real_redis, bob) == LIMIT
    assert len(refused) == CLIENTS * CALLS_EACH - LIMIT


def test_a_call_refused_by_its_key_counts_for_neither_window(real_redis):
    bob, ci_key, laptop_key = user_window(3), key_window(1), key_window(3)
    rate_limit_admit(windows=[bob, ci_key], now=NOW)

    with pytest.raises(RateLimited) as refused:
        rate_limit_admit(windows=[bob, ci_key], now=NOW)

    assert refused.value.fields == {"limit_per_minute": ["1"], "limited_by": ["api_key"]}
    assert "this API key" in refused.value.message
    assert (counted(real_redis, bob), counted(real_redis, ci_key)) == (1, 1)
    # bob's other key still has the two calls his own window has left
    assert rate_limit_admit(windows=[bob, laptop_key], now=NOW).used == 2
    assert rate_limit_admit(windows=[bob, laptop_key], now=NOW).used == 3


def test_a_call_refused_by_its_user_counts_for_neither_window(real_redis):
    bob, first_key, second_key = user_window(2), key_window(2), key_window(2)
    rate_limit_admit(windows=[bob, first_key], now=NOW)
    rate_limit_admit(windows=[bob, second_key], now=NOW)

    with pytest.raises(RateLimited) as refused:
        rate_limit_admit(windows=[bob, first_key], now=NOW)

    assert refused.value.fields == {"limit_per_minute": ["2"], "limited_by": ["user"]}
    assert "your account" in refused.value.message
    assert [counted(real_redis, w) for w in (bob, first_key, second_key)] == [2, 1, 1]


def test_the_next_window_admits_again_and_retry_after_counts_down_to_it(real_redis):
    user = user_window(1)
    window_start = 1_900_000_020.0 - 1_900_000_020.0 % WINDOW_SECONDS
    rate_limit_admit(windows=[user], now=window_start + 10)

    with pytest.raises(RateLimited) as refused:
        rate_limit_admit(windows=[user], now=window_start + 45.5)

    assert refused.value.retry_after == 15
    assert refused.value.status == 429
    assert rate_limit_admit(windows=[user], now=window_start + WINDOW_SECONDS).used == 1


def test_users_have_separate_counters(real_redis):
    bob, mallory = user_window(1), user_window(1)
    rate_limit_admit(windows=[mallory])

    with pytest.raises(RateLimited):
        rate_limit_admit(windows=[mallory])

    assert rate_limit_admit(windows=[bob]).used == 1
