"""`make run` end to end: embedded Valkey + SQLite, web + worker, clean shutdown.

Each run starts `make run` in a session of its own, as an operator would (`setsid make
run`), with a marker in its environment that every process it starts inherits: what
carries the marker after the grace period has escaped.
"""

import contextlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240  # a cold start migrates SQLite and builds the tiny LM on 2 busy cores
STOP_TIMEOUT = 60  # the launcher's grace period (15 s) and then some, on a busy machine
LEFTOVER_TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(marker: str, var_dir: Path) -> dict[int, str]:
    """Every live process that carries the marker or works in var_dir, with its command line.

    valkey-server rewrites its process title over its environment, so the marker
    cannot be read there: it is found by its working directory, var_dir/valkey.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                cwd = Path(os.readlink(entry / "cwd"))
                if not cwd.is_relative_to(var_dir):
                    continue
            if "\nState:\tZ" in (entry / "status").read_text():
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


class MakeRun:
    """One `make run` in a session of its own, its output in a file."""

    def __init__(self, var_dir: Path, log_path: Path):
        self.port = free_port()
        self.marker = f"NICHE_SMOKE_{uuid.uuid4().hex}"
        self.log_path = log_path
        self.var_dir = var_dir
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env |= {
            "PORT": str(self.port),
            "NICHE_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": "marketplace.settings.local",
            "MODEL_CACHE_DIR": str(ROOT / "var" / "models"),  # reuse the built tiny LM
            "HEALTHZ_TOKEN": "smoke-test-token",  # unlocks the details of /healthz
            self.marker: "1",
        }
        with log_path.open("w") as log:
            # -o: never reinstall the venv from inside a test, even if pyproject changed.
            self.make = subprocess.Popen(
                ["make", "--no-print-directory", "-o", ".venv/.installed", "run"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> dict[int, str]:
        return processes_of(self.marker, self.var_dir)

    def wait_for(self, condition, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.make.poll() is None, f"make exited before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def wait_for_process(self, *words: str) -> None:
        def running() -> bool:
            return any(all(w in cmd for w in words) for cmd in self.processes().values())

        self.wait_for(running, f"process with {words}")

    def wait_until_running(self) -> None:
        self.wait_for(lambda: "Press Ctrl-C" in self.output(), "'Press Ctrl-C'")

    def launcher_pid(self) -> int:
        # make's own child: a child the launcher has just forked shows the launcher's
        # command line too until it execs its program.
        def parent(pid: int) -> int:
            with contextlib.suppress(OSError):
                return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            return -1

        pids = [
            p
            for p, cmd in self.processes().items()
            if "marketplace.launcher" in cmd and parent(p) == self.make.pid
        ]
        assert len(pids) == 1, self.processes()
        return pids[0]

    def send(self, signum: int, *, to: str) -> None:
        if to == "group":  # what systemd, `timeout` and CI runners do
            os.killpg(self.make.pid, signum)
        else:
            os.kill(self.launcher_pid(), signum)

    def assert_nothing_left(self) -> None:
        try:
            self.make.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run still running {STOP_TIMEOUT}s after the signal")
        deadline = time.monotonic() + LEFTOVER_TIMEOUT
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.processes()
        assert left == {}, f"left behind: {left}\n{self.output()[-3000:]}"

    def kill_leftovers(self) -> None:
        """Whatever a failed run left behind: the processes this test started, by marker."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.make.wait(timeout=10)


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory) -> Path:
    """One NICHE_VAR_DIR per module: later starts reuse the migrated SQLite database."""
    return tmp_path_factory.mktemp("make-run") / "var"


@pytest.fixture
def make_run(var_dir, tmp_path):
    started: list[MakeRun] = []

    def start() -> MakeRun:
        run = MakeRun(var_dir, tmp_path / f"run-{len(started)}.log")
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_leftovers()


def test_make_run_starts_the_platform_and_stops_cleanly(make_run):
    run = make_run()
    run.wait_until_running()
    port = run.port
    output = run.output()
    assert f"http://127.0.0.1:{port}/" in output
    assert "expert@demo.niche" in output and "niche-demo-2026" in output
    assert re.search(r"^\[web\]", output, re.M) and re.search(r"^\[worker\]", output, re.M)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        assert r.status == 200
        assert json.load(r) == {"status": "ok"}  # the public learns nothing more
    health_request = urllib.request.Request(
        f"http://127.0.0.1:{port}/healthz",
        headers={"Authorization": "Bearer smoke-test-token"},
    )
    with urllib.request.urlopen(health_request, timeout=10) as r:  # noqa: S310 (http://127.0.0.1)
        details = json.load(r)
    assert details["checks"]["database"]["vendor"] == "sqlite"
    assert details["checks"]["broker"]["ok"] and details["checks"]["workers"]["ok"]

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

    started = run.processes()
    assert len(started) >= 5, started  # make, launcher, valkey, gunicorn (+workers), celery

    run.send(signal.SIGTERM, to="launcher")
    run.assert_nothing_left()
    assert run.make.returncode == 0
    assert "[niche]  stopped" in run.output()


# Where in its life the platform is when the signal comes, and how to tell from outside.
STAGES = {
    "broker": lambda run: run.wait_for_process("valkey"),
    "migrate": lambda run: run.wait_for_process("manage.py", "migrate"),
    "seed": lambda run: run.wait_for_process("manage.py", "seed_demo"),
    "children": lambda run: run.wait_for_process("celery", "worker"),
    "healthy": MakeRun.wait_until_running,
}


@pytest.mark.parametrize(
    ("stage", "signum", "to"),
    [
        ("healthy", signal.SIGTERM, "group"),
        ("healthy", signal.SIGINT, "group"),
        ("healthy", signal.SIGTERM, "launcher"),
        ("healthy", signal.SIGINT, "launcher"),
        ("broker", signal.SIGTERM, "group"),
        ("broker", signal.SIGINT, "launcher"),
        ("migrate", signal.SIGTERM, "launcher"),
        ("seed", signal.SIGINT, "group"),
        ("children", signal.SIGTERM, "group"),
        ("children", signal.SIGTERM, "launcher"),
    ],
    ids=lambda value: getattr(value, "name", value),
)
def test_a_signal_stops_everything_make_run_started(make_run, stage, signum, to):
    """systemd, `timeout` and CI runners SIGTERM the whole group; Ctrl-C sends SIGINT."""
    run = make_run()
    STAGES[stage](run)

    run.send(signum, to=to)

    run.assert_nothing_left()
    assert "[niche]  stopped" in run.output()
    if to == "launcher":  # make itself got no signal: it reports the launcher's code
        assert run.make.returncode == 0, run.output()[-3000:]


def test_a_killed_launcher_takes_everything_it_started_down(make_run):
    """SIGKILL cannot be handled: the kernel tells each child that its launcher died."""
    run = make_run()
    run.wait_until_running()

    run.send(signal.SIGKILL, to="launcher")

    run.assert_nothing_left()
    assert run.make.returncode != 0
