"""The web tier as a real process for the crash and load tests: `python -m
marketplace.server` (gunicorn over uvicorn workers, 2 of them) as `make run` starts it, in
a process group of its own, on the test database, on a free loopback port."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import requests

from tests.integration.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    def __init__(self, env: dict, name: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ROOT / "var" / f"test-gunicorn-{name}-{uuid.uuid4().hex[:6]}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "marketplace.server"],  # the web tier as deployed
            cwd=ROOT, env=env | {"WEB_BIND": f"127.0.0.1:{self.port}", "WEB_WORKERS": "2"},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> "Gunicorn":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            # Up once Django answers /healthz: 200, or 503 "degraded" when no Celery
            # worker runs (these tests need none).
            with contextlib.suppress(requests.RequestException, ValueError):
                answer = requests.get(f"{self.url}/healthz", timeout=2)
                if answer.status_code in (200, 503) and "status" in answer.json():
                    return self
            time.sleep(0.3)
        raise AssertionError(f"gunicorn not ready: {self.log_path.read_text()[-3000:]}")

    def answered(self, method: str, path: str, status: int) -> int:
        """How many `method path` requests it answered with `status` (niche.request's
        line for every request)."""
        line = f"niche.request: {method} {path} {status}"
        return sum(entry.endswith(line) or f"{line} " in entry
                   for entry in self.log_path.read_text().splitlines())  # fmt: skip

    def kill(self, sig=signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:  # gunicorn's graceful timeout is 30 s; keep-alive clients can hold it
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
