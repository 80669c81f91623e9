"""The Celery application: JSON only, three queues, routes by task module."""

import inspect
import logging
import os

from celery import Celery, signals
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

logger = logging.getLogger(__name__)

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


_task_log_tokens: dict[str, object] = {}


def _job_id_of(task, args, kwargs) -> str | None:
    """The fine-tuning job a task works on: its `job_id` argument, by name or position."""
    if kwargs and kwargs.get("job_id"):
        return str(kwargs["job_id"])
    try:
        names = list(inspect.signature(task.run).parameters)  # a bound task's self excluded
    except (TypeError, ValueError):
        return None
    if args and "job_id" in names and names.index("job_id") < len(args):
        return str(args[names.index("job_id")])
    return None


@signals.task_prerun.connect
def _bind_task_log_context(task_id=None, task=None, args=None, kwargs=None, **_):
    """Every line a task logs names the task and, for a job's task, the job."""
    from marketplace.log_context import bind

    _task_log_tokens[task_id] = bind(
        task_id=task_id, task_name=task.name, job_id=_job_id_of(task, args, kwargs)
    )


@signals.task_postrun.connect
def _unbind_task_log_context(task_id=None, **_):
    from marketplace.log_context import reset

    token = _task_log_tokens.pop(task_id, None)
    if token is not None:
        reset(token)


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
