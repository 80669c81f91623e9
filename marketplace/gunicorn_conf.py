"""The web tier's one server config: `python -m marketplace.server` (make run, the
Dockerfile's CMD and docker-compose's web service all start it; a test checks that they
agree and that nothing starts the web tier another way).

gunicorn supervises WEB_WORKERS processes; each runs uvicorn's event loop on the ASGI
application (marketplace.asgi), so the gateway's async views wait on Redis for an
engine's answer or a token stream without holding a thread: an open stream costs a
coroutine, not one of a fixed number of threads. The rest of the site (DRF views, the
portal) runs in Django's thread pool under the same loop.

- WEB_BIND: where to listen (default 127.0.0.1:$PORT, PORT default 8000; compose and the
  image set 0.0.0.0:8000).
- WEB_WORKERS: processes (default 2; set it to the machine's cores on a web machine).
- WEB_TIMEOUT: seconds a worker may fail to check in before gunicorn replaces it (30). A
  worker killed mid-call leaves its ledger row unsettled; billing's sweep settles it
  failed (not billed).

/metrics sums every worker: prometheus_client's multiprocess mode, each worker writing
its samples under PROMETHEUS_MULTIPROC_DIR (set here, before any worker imports
prometheus_client, and emptied at start so an old run's counts do not add up).
"""

import os
import shutil
import tempfile
from pathlib import Path

# Read by the settings: under ASGI the database connections come from a pool.
os.environ.setdefault("NICHE_WEB_SERVER", "asgi")

wsgi_app = "marketplace.asgi:application"
worker_class = "marketplace.server.UvicornWorker"
bind = [os.environ.get("WEB_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_WORKERS", "2"))
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
accesslog = None  # niche.request logs every request, with its request id and user

multiproc_dir = Path(
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="niche-metrics-"))
)


def on_starting(server) -> None:
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    multiproc_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
