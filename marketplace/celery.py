"""The Celery application: JSON only, three queues, routes by task module."""

import logging
import os

from celery import Celery
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

logger = logging.getLogger(__name__)

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="marketplace.ping")
def ping() -> str:
    """A round trip through the broker and a worker, for health checks and tests."""
    return "pong"


def send_after_commit(task_name: str, *args: str) -> None:
    """Send a registered task by name once the current transaction commits (ids only).

    Services call this instead of importing their app's tasks module, so only tasks.py
    knows Celery. A broker that refuses the message is logged, not raised: the row is
    already committed and the app's sweep sends the task again.
    """
    from django.db import transaction

    def send() -> None:
        try:
            app.tasks[task_name].delay(*args)
        except OperationalError:  # the broker is down or refused it
            logger.exception("could not send %s%r; the sweep will send it again", task_name, args)

    transaction.on_commit(send)


class BrokerUnavailable(Exception):
    """The broker refused or could not take the message."""


class NoAnswer(Exception):
    """No worker answered within the time the caller gave."""


def send_by_name(task_name: str, payload: dict, *, task_id: str, queue: str) -> None:
    """Send a task by name now (not on commit) with one JSON argument; no retries, so a
    dead broker fails the caller at once (BrokerUnavailable) instead of hanging it."""
    try:
        app.send_task(task_name, args=[payload], task_id=task_id, queue=queue, retry=False)
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(str(exc)) from exc


def wait_for_answer(task_id: str, *, timeout: float) -> dict:
    """The task's return value (a JSON dict) once a worker sends it, within `timeout`
    seconds (NoAnswer otherwise; BrokerUnavailable when the backend is unreachable). A
    task that raised answers {"error": {"code": "engine_error", ...}}."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    result = app.AsyncResult(task_id)
    try:
        value = result.get(timeout=timeout, propagate=False, interval=0.05)
    except CeleryTimeout as exc:
        raise NoAnswer(task_id) from exc
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(str(exc)) from exc
    if result.failed() or not isinstance(value, dict):
        return {"error": {"code": "engine_error", "message": f"The task failed: {value!r}"}}
    result.forget()
    return value


def queue_has_workers(queue: str, *, timeout: float = 0.5) -> bool:
    """Whether any live worker consumes `queue` (a control broadcast: costs `timeout`)."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except (OperationalError, OSError):
        return False
    return any(q.get("name") == queue for queues in replies.values() for q in queues or [])
