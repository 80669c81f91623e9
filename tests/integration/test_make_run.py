"""`make run` end to end: embedded Valkey + SQLite, web + worker, clean shutdown."""

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_with_marker(marker: str) -> set[int]:
    """Every live process whose environment carries the marker: all the launcher started."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:
                    found.add(int(entry.name))
        except OSError:
            continue
    return found


def test_make_run_starts_the_platform_and_stops_cleanly(tmp_path):
    port = free_port()
    marker = f"NICHE_SMOKE_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "PORT": str(port),
        "NICHE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.local",
        "MODEL_CACHE_DIR": str(ROOT / "var" / "models"),  # reuse the built tiny LM
        "HEALTHZ_TOKEN": "smoke-test-token",  # unlocks the details of /healthz
        marker: "1",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "marketplace.launcher"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Niche is running" not in log_path.read_text():
            assert launcher.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}/" in output
        assert "expert@demo.niche" in output and "niche-demo-2026" in output
        assert re.search(r"^\[web\]", output, re.M) and re.search(r"^\[worker\]", output, re.M)

        health_request = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz",
            headers={"Authorization": "Bearer smoke-test-token"},
        )
        with urllib.request.urlopen(health_request, timeout=10) as r:  # noqa: S310 (http://127.0.0.1)
            health = r.read().decode()
            assert r.status == 200
        assert '"database": {"ok": true, "vendor": "sqlite"' in health

        # Log in as the demo expert through the real login form.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"http://127.0.0.1:{port}/login/", timeout=10).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode(
            {
                "csrfmiddlewaretoken": token,
                "username": "expert@demo.niche",
                "password": "niche-demo-2026",
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/login/",
            data=form,
            headers={"Referer": f"http://127.0.0.1:{port}/login/"},
        )
        dashboard = opener.open(request, timeout=10)
        assert dashboard.url.endswith("/dashboard/")
        assert "Hello, Dr. Ada Expert" in dashboard.read().decode()

        # The worker, on the embedded Valkey, validates the seeded demo datasets.
        def demo_datasets() -> list[dict]:
            url = f"http://127.0.0.1:{port}/api/v1/datasets"
            return json.load(opener.open(url, timeout=10))["data"]

        deadline = time.monotonic() + 60
        while {d["status"] for d in demo_datasets()} != {"ready"}:
            assert time.monotonic() < deadline, demo_datasets()
            time.sleep(0.5)
        assert len(demo_datasets()) == 2

        started = pids_with_marker(marker)
        assert len(started) >= 4  # launcher, valkey, gunicorn (+workers), celery (+children)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)

    deadline = time.monotonic() + 10
    while pids_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids_with_marker(marker) == set(), "processes left behind after SIGTERM"
    assert launcher.returncode == 0
    assert "stopped" in log_path.read_text()
