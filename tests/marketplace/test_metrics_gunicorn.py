"""/metrics under a real gunicorn with several worker processes counts them all."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gunicorn-metrics-token-" + "z" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 (http://127.0.0.1 only)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (local)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 401
    except urllib.error.URLError:  # not listening yet
        return False


def requests_counted(text: str, view: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "niche_http_requests_total" and sample.labels["view"] == view
    )


def test_a_scrape_sums_the_requests_of_every_gunicorn_worker(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_stale.db").write_bytes(b"left by an old run")
    env |= {"WEB_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "3"}
    server = subprocess.Popen(
        [sys.executable, "-m", "marketplace.server"],  # the web tier as deployed
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not answers(f"{base}/metrics"):
            assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)

        # Ten at a time, each on a connection of its own, so several workers take some.
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: get(f"{base}/api/v1/nope")[0], range(30)))
        assert statuses == [404] * 30
        counts = [
            requests_counted(get(f"{base}/metrics", TOKEN)[1], "marketplace.api.api_not_found")
            for _ in range(6)
        ]
        pids = {p.name.split("_")[-1] for p in (tmp_path / "metrics").glob("counter_*.db")}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

    # Whichever worker answers the scrape, it reports all 30 (the stale file was wiped).
    assert counts == [30.0] * 6
    assert len(pids) >= 2, f"the requests reached one worker only: {pids}"
