"""Celery adapters of the portal: the living demo's watcher."""

from celery import shared_task

from frontend import services

DEMO_POLL_SECONDS = 10
DEMO_POLL_LIMIT = 360  # an hour of polling; a demo fine-tune takes a few minutes


@shared_task(name=services.DEMO_PUBLISH_TASK, bind=True, max_retries=DEMO_POLL_LIMIT)
def demo_publish_when_trained(self, job_id: str) -> str:
    """List a demo fine-tune once it has succeeded, then queue the next; look again
    later while it runs."""
    outcome = services.demo_watch(job_id=job_id)
    if outcome == services.DemoOutcome.WAITING:
        raise self.retry(countdown=DEMO_POLL_SECONDS)
    return outcome.value
