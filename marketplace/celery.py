"""The Celery application: JSON only, three queues, routes by task module."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="marketplace.ping")
def ping() -> str:
    """A round trip through the broker and a worker, for health checks and tests."""
    return "pong"
