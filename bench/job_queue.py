"""Training jobs through the real queue while workers die: none lost, none run twice.

(Named job_queue.py, not queue.py: a script's folder comes first on sys.path, and a
bench/queue.py would shadow the standard library's queue for every script in bench/.)

Usage: ``nice -n 5 python bench/job_queue.py [--jobs 300] [--workers 3] [--rows 24]``.

In a database of its own (`<DATABASE_URL's name>_bench_queue`, emptied at start) and the
Redis of REDIS_URL (its queues purged at start):

1. starts one `default` worker with beat inside (dataset validation and the studio sweep
   every 30 s, as `make run` does) and `--workers` training workers (prefork, concurrency
   1), each a `celery worker` process in its own process group;
2. uploads one tiny generation data set (validated by the default worker), then creates
   `--jobs` fine-tuning jobs on `tiny-causal` (1 epoch, a few steps each) through
   training_worker.services.job_create: the path the API takes;
3. once a few jobs have finished, SIGKILLs one training worker's process group while it
   trains (it stays dead), and later restarts another (SIGTERM, warm shutdown, started
   again under the same name);
4. waits until every job is terminal and checks: each succeeded job has exactly one
   model version, each failed one an error code and message, nothing is still running
   or queued, no job has more versions than one (none ran to the end twice);
5. reports jobs/s (first create to last terminal), each job's attempts, and the broker
   round trip (a Redis PING, and the `marketplace.ping` task through a worker and back).

TRAINING_HEARTBEAT_STALE_SECONDS is 15 here (default 90), so the sweep notices the killed
worker's job within a minute. Writes bench/results/queue.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STALE_SECONDS = "15"


import bench_database  # noqa: E402 (bench/ is the script's folder on sys.path)


def bench_database_url(base: str) -> str:
    return bench_database.bench_database_url(base, "queue")


class Worker:
    """One `celery worker` in its own process group, logging to a file."""

    def __init__(self, env: dict, queues: str, name: str, log_dir: Path, extra=()) -> None:
        self.env, self.queues, self.name, self.log_dir, self.extra = (
            env, queues, name, log_dir, tuple(extra)
        )  # fmt: skip
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "marketplace", "worker",
                "-Q", self.queues, "--concurrency", "1", "-n", f"{self.name}@%h",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle", *self.extra,
            ],
            cwd=ROOT, env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            if "ready." in self.log_path.read_text():
                return
            time.sleep(0.3)
        raise SystemExit(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 120) -> None:
        """A restart as docker or systemd does it: SIGTERM to the main process (a warm
        shutdown: the job in hand finishes), SIGKILL to the group after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=30)


def broker_round_trips(samples: int) -> dict:
    import redis
    from django.conf import settings

    from marketplace.celery import app

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    pings = []
    for _ in range(samples):
        started = time.perf_counter()
        client.ping()
        pings.append((time.perf_counter() - started) * 1000)
    tasks = []
    for _ in range(samples):
        started = time.perf_counter()
        assert app.send_task("marketplace.ping", queue="default").get(timeout=30) == "pong"
        tasks.append((time.perf_counter() - started) * 1000)
    return {
        "redis_ping_ms_median": round(statistics.median(pings), 3),
        "task_round_trip_ms_median": round(statistics.median(tasks), 2),
        "task_round_trip_ms_p95": round(sorted(tasks)[int(0.95 * (len(tasks) - 1))], 2),
        "samples": samples,
    }


def generation_jsonl(rows: int) -> bytes:
    lines = []
    for n in range(rows):
        a, b = n % 10, (n * 3) % 7
        lines.append(json.dumps({"prompt": f"add {a} and {b}:", "completion": f" {a + b}"}))
    return ("\n".join(lines) + "\n").encode()


def wait_for(predicate, timeout: float, what: str, progress=None):
    """Poll `predicate` until it is true; `progress`, a tqdm bar and a count, is kept in
    step with the count while waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if progress is not None:
            bar, count = progress
            bar.update(count() - bar.n)
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3, help="training worker processes")
    parser.add_argument("--rows", type=int, default=24, help="rows of the tiny data set")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds for all jobs (default 600 + 15 a job)"
    )
    parser.add_argument("--round-trips", type=int, default=50)
    args = parser.parse_args()
    if args.workers < 2:
        raise SystemExit("--workers must be at least 2: one is killed, another restarted")
    if args.timeout is None:
        args.timeout = 600 + 15 * args.jobs

    base_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/niche")
    if not base_url.startswith("postgres"):
        raise SystemExit("The queue bench needs Postgres: set DATABASE_URL=postgres://...")
    database_url = bench_database_url(base_url)
    bench_database.ensure_database(database_url)
    os.environ.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="marketplace.settings.test_worker",
        TRAINING_HEARTBEAT_STALE_SECONDS=STALE_SECONDS,
        PYTHONUNBUFFERED="1",
    )

    import django

    django.setup()
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command

    from accounts.models import User
    from marketplace.celery import app
    from training_worker import services
    from training_worker.models import Dataset, FineTuningJob, JobStatus, ModelVersion

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    import importlib

    from django.apps import apps

    for name in ("0002_register_base_models", "0005_register_smollm2"):
        importlib.import_module(f"training_worker.migrations.{name}").register(apps, None)
    call_command("build_tiny_causal", verbosity=0)
    purged = app.control.purge()
    print(f"purged {purged} waiting messages; starting workers…", flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="niche-bench-queue-"))
    env = dict(os.environ)
    tag = uuid.uuid4().hex[:4]
    default = Worker(env, "default", f"bench-default-{tag}", log_dir,
                     ("--beat", "--schedule", str(log_dir / "beat-schedule")))  # fmt: skip
    trainers = [
        Worker(env, "training", f"bench-train{i}-{tag}", log_dir) for i in range(args.workers)
    ]
    loads = [os.getloadavg()]
    try:
        for worker in (default, *trainers):
            worker.wait_ready()
        round_trips = broker_round_trips(args.round_trips)
        print(f"broker: {round_trips}", flush=True)

        owner = User.objects.create_user(email="bench@example.com", password="x" * 16)
        dataset = services.dataset_upload(
            owner=owner, file=SimpleUploadedFile("qa.jsonl", generation_jsonl(args.rows))
        )
        wait_for(
            lambda: Dataset.objects.get(pk=dataset.pk).status in ("ready", "invalid"),
            120, "validation",
        )  # fmt: skip
        if Dataset.objects.get(pk=dataset.pk).status != "ready":
            raise SystemExit(
                f"the data set is invalid: {Dataset.objects.get(pk=dataset.pk).report}"
            )

        started = time.monotonic()
        job_ids = [
            services.job_create(
                owner=owner, base_model="tiny-causal", dataset_id=dataset.pk,
                hyperparameters={"n_epochs": 1, "batch_size": 8}, seed=n,
            ).pk
            for n in range(args.jobs)
        ]  # fmt: skip
        created_s = time.monotonic() - started
        print(f"created {args.jobs} jobs in {created_s:.1f} s", flush=True)

        def terminal() -> int:
            return FineTuningJob.objects.filter(
                pk__in=job_ids, status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED,
                                            JobStatus.CANCELLED],
            ).count()  # fmt: skip

        # Kill one trainer mid-job once a few jobs are done.
        victim = trainers[0]
        wait_for(lambda: terminal() >= max(3, args.jobs // 10), args.timeout, "the first jobs")
        killed_job = wait_for(
            lambda: FineTuningJob.objects.filter(
                status=JobStatus.RUNNING, worker__startswith=victim.name, step__gt=0
            ).values_list("pk", flat=True).first(),
            args.timeout, "the victim to be training",
        )  # fmt: skip
        victim.signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        killed_at = time.monotonic() - started
        print(f"SIGKILLed {victim.name} while it trained job {killed_job} "
              f"({terminal()} jobs done)", flush=True)  # fmt: skip

        # Restart another once a third of the jobs are done.
        restarted = trainers[1]
        wait_for(lambda: terminal() >= args.jobs // 3, args.timeout, "a third of the jobs")
        restarted.stop()
        restarted.start()
        restarted.wait_ready()
        print(f"restarted {restarted.name} ({terminal()} jobs done)", flush=True)
        loads.append(os.getloadavg())

        with tqdm(total=args.jobs, desc="jobs ended", unit="job", initial=terminal()) as bar:
            wait_for(
                lambda: terminal() == args.jobs, args.timeout, "every job to end", (bar, terminal)
            )
        elapsed = time.monotonic() - started
        loads.append(os.getloadavg())
    finally:
        for worker in (default, *trainers):
            worker.stop(timeout=60)

    jobs = list(FineTuningJob.objects.filter(pk__in=job_ids))
    versions = Counter(
        ModelVersion.objects.filter(job_id__in=job_ids).values_list("job_id", flat=True)
    )
    statuses = Counter(job.status for job in jobs)
    failed_without_reason = [
        str(j.pk)
        for j in jobs
        if j.status == JobStatus.FAILED and not (j.error_code and j.error_message)
    ]
    succeeded_without_version = [
        str(j.pk) for j in jobs if j.status == JobStatus.SUCCEEDED and versions[j.pk] != 1
    ]
    more_than_one_version = [str(pk) for pk, n in versions.items() if n > 1]
    lost = [str(j.pk) for j in jobs if j.status not in ("succeeded", "failed", "cancelled")]
    killed = next(j for j in jobs if j.pk == killed_job)
    checks = {
        "every_job_terminal": not lost and len(jobs) == args.jobs,
        "failed_jobs_have_a_reason": not failed_without_reason,
        "succeeded_jobs_have_one_version": not succeeded_without_version,
        "no_job_finished_twice": not more_than_one_version,
    }
    summary = {
        "jobs": args.jobs,
        "training_workers": args.workers,
        "statuses": dict(statuses),
        "failures": dict(Counter(j.error_code for j in jobs if j.status == JobStatus.FAILED)),
        "attempts": dict(Counter(j.attempts for j in jobs)),
        "killed_worker_job": {"id": str(killed.pk), "status": killed.status,
                              "attempts": killed.attempts, "error_code": killed.error_code},
        "killed_at_s": round(killed_at, 1),
        "checks": checks,
        "all_checks_pass": all(checks.values()),
        "lost": lost,
        "elapsed_s": round(elapsed, 1),
        "jobs_per_s": round(args.jobs / elapsed, 3),
        "create_s": round(created_s, 2),
        "broker": round_trips,
        "job_seconds_median": round(statistics.median(
            (j.finished_at - j.started_at).total_seconds() for j in jobs
            if j.finished_at and j.started_at), 2),
        "load_averages": [[round(x, 2) for x in load] for load in loads],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "worker_logs": str(log_dir),
    }  # fmt: skip
    out = ROOT / "bench" / "results" / "queue.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("statuses", "attempts", "checks", "jobs_per_s",
                                             "elapsed_s")}))  # fmt: skip
    print(
        f"{args.jobs} jobs on {args.workers} training workers (one SIGKILLed, one restarted): "
        f"{summary['jobs_per_s']} jobs/s; task round trip "
        f"{round_trips['task_round_trip_ms_median']} ms; wrote {out.relative_to(ROOT)}"
    )
    sys.exit(0 if summary["all_checks_pass"] else 1)


if __name__ == "__main__":
    main()
