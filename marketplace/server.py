"""`python -m marketplace.server`: the web tier, as every deployment starts it.

One command, one config (marketplace/gunicorn_conf.py): make run's launcher, the
Dockerfile's CMD and docker-compose's web service run exactly this, configured only by
environment variables (WEB_BIND, WEB_WORKERS, WEB_TIMEOUT).
"""

from __future__ import annotations

import os
import sys

from uvicorn_worker import UvicornWorker as _UvicornWorker

COMMAND = [sys.executable, "-m", "gunicorn", "-c", "python:marketplace.gunicorn_conf"]


class UvicornWorker(_UvicornWorker):
    """uvicorn under gunicorn, as Django's ASGI application wants it: no lifespan
    protocol (Django has none), no access log of its own (niche.request logs each
    request), uvloop and httptools when installed."""

    CONFIG_KWARGS = {"lifespan": "off", "access_log": False, "loop": "auto", "http": "auto"}


def main() -> None:
    os.execv(COMMAND[0], COMMAND)  # noqa: S606  (gunicorn replaces this process: signals reach it)


if __name__ == "__main__":
    main()
