"""gunicorn settings for the web tier: `gunicorn -c python:marketplace.gunicorn_conf ...`.

gunicorn answers with several worker processes; /metrics must count the requests of all
of them, whichever answers the scrape. prometheus_client's multiprocess mode does that:
each worker writes its samples under PROMETHEUS_MULTIPROC_DIR and a scrape sums the
files. The directory must be set before a worker imports prometheus_client (this file is
read by the master, before it forks) and empty at start (stale files would add an old
run's counts). Left unset, a fresh temporary directory is used.
"""

import os
import shutil
import tempfile
from pathlib import Path

multiproc_dir = Path(
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="niche-metrics-"))
)


def on_starting(server) -> None:
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    multiproc_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
