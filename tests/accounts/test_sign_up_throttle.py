"""Sign-ups are throttled per client address and overall, in Redis (shared by every web
process): past either limit, 429 with Retry-After and no account. The client address is
the one django-axes locks log-ins on, behind AXES_IPWARE_PROXY_COUNT proxies."""

import threading
import uuid

import pytest
from django.conf import settings
from django.test import Client, RequestFactory, override_settings

from accounts.client_address import client_address
from accounts.models import User
from accounts.throttle import Window, WindowFull, windows_admit
from tests.hardening.world import PASSWORD

STRONG = "plum orbit lantern 7"


def sign_up(email: str, ip: str = "203.0.113.5", **headers):
    return Client().post(
        "/signup/", {"email": email, "password": STRONG}, REMOTE_ADDR=ip, **headers
    )


@override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=3, SIGNUP_MAX_PER_HOUR=100)
def test_one_address_gets_a_few_sign_ups_an_hour_then_429(db):
    answers = [sign_up(f"bot{n}@example.com") for n in range(5)]

    assert [a.status_code for a in answers] == [302, 302, 302, 429, 429]
    refused = answers[3]
    assert 1 <= int(refused["Retry-After"]) <= 3600
    assert "Too many sign-ups from your network (3 an hour)" in refused.content.decode()
    assert sorted(User.objects.values_list("email", flat=True)) == [
        "bot0@example.com", "bot1@example.com", "bot2@example.com",
    ]  # fmt: skip
    # another address is not held back by this one
    assert sign_up("someone@example.com", ip="198.51.100.7").status_code == 302


@override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=5, SIGNUP_MAX_PER_HOUR=3)
def test_all_addresses_together_stop_at_the_global_ceiling(db):
    answers = [sign_up(f"user{n}@example.com", ip=f"198.51.100.{n + 1}") for n in range(4)]

    assert [a.status_code for a in answers] == [302, 302, 302, 429]
    assert "Sign-ups are paused" in answers[3].content.decode()
    assert "Retry-After" in answers[3]
    assert User.objects.count() == 3


@override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=2, SIGNUP_MAX_PER_HOUR=4)
def test_a_refused_sign_up_does_not_use_up_the_global_ceiling(db):
    # mallory's address hammers its own limit: 2 accepted, 8 refused
    for n in range(10):
        sign_up(f"mallory{n}@example.com", ip="203.0.113.66")

    # everyone else still has the two sign-ups the ceiling has left, no fewer
    others = [sign_up(f"user{n}@example.com", ip=f"198.51.100.{n + 1}") for n in range(3)]

    assert [a.status_code for a in others] == [302, 302, 429]
    assert User.objects.count() == 4


@override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=2)
def test_a_taken_email_counts_so_probing_for_accounts_is_throttled(bob):
    answers = [sign_up("bob@example.com", ip="203.0.113.9") for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "already exists" in answers[0].content.decode()


def test_an_invalid_form_does_not_count(db):
    with override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=1):
        for _ in range(3):
            weak = Client().post(
                "/signup/", {"email": "x@example.com", "password": "123"}, REMOTE_ADDR="203.0.113.8"
            )
            assert weak.status_code == 200
        assert sign_up("x@example.com", ip="203.0.113.8").status_code == 302


@override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=2, AXES_IPWARE_PROXY_COUNT=1)
def test_behind_a_proxy_the_client_is_the_address_the_proxy_saw(db):
    proxy = "10.0.0.2"  # every request reaches the web tier from the proxy

    def through_proxy(email, client, spoofed=""):
        forwarded = f"{spoofed}, {client}" if spoofed else client
        return sign_up(email, ip=proxy, HTTP_X_FORWARDED_FOR=forwarded)

    # two clients behind one proxy each get their own allowance...
    assert through_proxy("a1@example.com", "198.51.100.1").status_code == 302
    assert through_proxy("a2@example.com", "198.51.100.1").status_code == 302
    assert through_proxy("b1@example.com", "198.51.100.2").status_code == 302
    # ...and a client cannot reset its own by forging entries left of the proxy's
    forged = through_proxy("a3@example.com", "198.51.100.1", spoofed="192.0.2.99")

    assert forged.status_code == 429
    assert User.objects.count() == 3


def test_the_client_address_reads_only_what_the_trusted_proxies_wrote():
    factory = RequestFactory()

    def address(proxies, remote, forwarded=None):
        headers = {"REMOTE_ADDR": remote}
        if forwarded is not None:
            headers["HTTP_X_FORWARDED_FOR"] = forwarded
        with override_settings(AXES_IPWARE_PROXY_COUNT=proxies):
            return client_address(factory.get("/", **headers))

    assert address(None, "203.0.113.5", "192.0.2.1") == "203.0.113.5"  # no proxy: no header
    assert address(1, "10.0.0.2", "192.0.2.1, 198.51.100.4") == "198.51.100.4"
    assert address(2, "10.0.0.3", "192.0.2.1, 198.51.100.4, 10.0.0.2") == "198.51.100.4"
    assert address(2, "10.0.0.3", "198.51.100.4") == "10.0.0.3"  # bypassed a proxy
    assert address(1, "10.0.0.2", "not-an-address") == "10.0.0.2"
    assert address(1, "10.0.0.2", "2001:db8::1") == "2001:db8::1"


@override_settings(AXES_IPWARE_PROXY_COUNT=1)
def test_log_in_lockouts_key_on_the_same_client_address(db):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    proxy = "10.0.0.2"

    def log_in(password, client_ip):
        return Client().post(
            "/login/",
            {"username": "erin@example.com", "password": password},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=client_ip,
        )

    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in("wrong guess", "203.0.113.66")

    # the guesser is locked out; erin, behind the same proxy, is not
    assert log_in(PASSWORD, "203.0.113.66").status_code == 429
    assert log_in(PASSWORD, "198.51.100.9").status_code == 302


def test_an_ipv6_network_counts_as_one_address(db):
    with override_settings(SIGNUP_MAX_PER_ADDRESS_PER_HOUR=2):
        first = sign_up("v1@example.com", ip="2001:db8:1:2::10")
        second = sign_up("v2@example.com", ip="2001:db8:1:2::ffff")
        same_64 = sign_up("v3@example.com", ip="2001:db8:1:2:abcd::1")
        other_64 = sign_up("v4@example.com", ip="2001:db8:1:3::1")

    assert [r.status_code for r in (first, second, same_64, other_64)] == [302, 302, 429, 302]


def test_concurrent_events_from_many_threads_are_admitted_exactly_to_the_limit(db):
    """The Lua script checks and counts in one step: 40 threads at once, limit 7."""
    address = Window(f"test:address:{uuid.uuid4()}", 7, 3600)
    everyone = Window(f"test:all:{uuid.uuid4()}", 1000, 3600)
    start = threading.Barrier(40)
    admitted, refused = [], []

    def attempt():
        start.wait()
        try:
            windows_admit([address, everyone], now=1_900_000_000.0)
            admitted.append(1)
        except WindowFull as full:
            refused.append(full)

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(admitted) == 7 and len(refused) == 33
    assert {full.window for full in refused} == {address}
    # the refused 33 did not count in the other window: it holds the 7 admitted
    with pytest.raises(WindowFull):
        windows_admit([Window(everyone.subject, 7, 3600)], now=1_900_000_000.0)
    windows_admit([Window(everyone.subject, 8, 3600)], now=1_900_000_000.0)


def test_sign_ups_stop_when_the_throttles_store_is_unreachable(db, settings):
    from accounts import throttle

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    throttle._redis.cache_clear()
    throttle._admit_script.cache_clear()
    try:
        response = sign_up("during-outage@example.com")
    finally:
        throttle._redis.cache_clear()
        throttle._admit_script.cache_clear()

    assert response.status_code == 503
    assert "try again in a minute" in response.content.decode()
    assert not User.objects.filter(email="during-outage@example.com").exists()
