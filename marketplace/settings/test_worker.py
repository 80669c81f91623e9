"""Celery worker processes started by the integration tests.

The test settings, except that tasks are never run inline: a task a worker sends (the
training a validation queues) travels through Redis to whichever worker listens on its
queue, as in production. Unit tests keep marketplace.settings.test (eager).
"""

from marketplace.settings.test import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_EAGER_PROPAGATES = False
