"""Real services for integration tests: Redis, Postgres and Celery worker processes.

A service that is down skips these tests with the reason, except with CI=true, where
it fails them: CI must never go green by skipping what it was meant to check.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if settings.IS_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        require(False, f"Redis at {settings.REDIS_URL} is unreachable ({exc})")
    return settings.REDIS_URL


def database_url_of(settings_dict: dict) -> str:
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


# How `make run` and docker-compose start the inference worker: one process, many threads
# waiting on its one batcher (serving/engine/batching.py).
INFERENCE_POOL_ARGS = ("-P", "threads", "--concurrency", "16")


class WorkerProcess:
    """`celery worker` in a process group of its own, on the test database."""

    def __init__(
        self, env: dict, queues: str, name: str, pool_args: tuple[str, ...] = ("--concurrency", "1")
    ):
        self.name = name
        self.env, self.queues, self.pool_args = env, queues, pool_args
        self.log_path = ROOT / "var" / f"test-worker-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "marketplace", "worker",
                "-Q", queues, *pool_args, "-n", f"{name}@%h",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            ],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        from marketplace.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early: {self.log_path.read_text()[-2000:]}")
            replies = app.control.ping(timeout=0.5) or []
            if any(self.name in reply_name for reply in replies for reply_name in reply):
                break
        else:
            raise RuntimeError(f"worker not ready: {self.log_path.read_text()[-2000:]}")
        if self.serves_calls:  # and its engine reads interactive calls (serving.dispatch)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker exited: {self.log_path.read_text()[-2000:]}")
                if self.beating():
                    return
                time.sleep(0.2)
            raise RuntimeError(f"engine not reading: {self.log_path.read_text()[-2000:]}")

    @property
    def serves_calls(self) -> bool:
        return "inference" in self.queues.split(",") and "threads" in self.pool_args

    def beating(self) -> bool:
        """This worker's engine beat in the last few seconds (serving.dispatch.WORKERS)."""
        import redis as redis_lib

        from serving import dispatch

        client = redis_lib.Redis.from_url(self.env["REDIS_URL"])
        name = f"{socket.gethostname()}:{self.process.pid}"
        seen = client.zscore(dispatch.WORKERS, name)
        return seen is not None and time.time() - seen < dispatch.ALIVE_SECONDS

    def child_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split() if int(p) != self.process.pid]

    def kill(self, sig=signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
        self.log.close()


@pytest.fixture(scope="session")
def worker_env(redis_url, django_db_setup, django_db_blocker) -> dict:
    db = settings.DATABASES["default"]
    require(
        db["ENGINE"] == "django.db.backends.postgresql",
        "worker processes need a shared database: PostgreSQL is unreachable",
    )
    from django.db import connection

    env = os.environ.copy()
    env.update(
        # Not the unit tests' settings: those run every task inline (eager), so a task
        # a worker sends would run in that worker instead of going through the queues.
        DJANGO_SETTINGS_MODULE="marketplace.settings.test_worker",
        DATABASE_URL=database_url_of(connection.settings_dict),
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def celery_worker_process(worker_env):
    """One worker process on every queue, for the tests of one module.

    Module-scoped so that a module testing worker loss has only its own workers.
    """
    worker = WorkerProcess(worker_env, "default,training,inference", f"it-{uuid.uuid4().hex[:6]}")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def spawn_worker(worker_env):
    """Start extra worker processes inside one test; each is stopped afterwards."""
    started: list[WorkerProcess] = []

    def spawn(queues: str = "training", pool_args: tuple[str, ...] = ("--concurrency", "1")):
        worker = WorkerProcess(worker_env, queues, f"tmp-{uuid.uuid4().hex[:6]}", pool_args)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture(autouse=True)
def send_tasks_to_the_broker():
    """Unit tests run tasks inline; here they travel through Redis to worker processes."""
    from marketplace.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def shipped_base_models(transactional_db):
    """Transactional tests flush tables: put back the rows the migration registers."""
    import importlib

    from django.apps import apps

    for name in ("0002_register_base_models", "0005_register_smollm2"):
        importlib.import_module(f"training_worker.migrations.{name}").register(apps, None)


@pytest.fixture
def inference_workers(worker_env):
    """start(**env) -> a ready InferenceWorker; every one started is stopped after."""
    from tests.integration.specialists import InferenceWorker  # it imports this module

    started: list[InferenceWorker] = []

    def start(**env: str) -> InferenceWorker:
        worker = InferenceWorker(worker_env, **env)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()
