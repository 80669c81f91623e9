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
