"""Celery adapters of commerce: load by id, call a service."""

from celery import shared_task

from billing import metering, stripe_events
from billing.errors import PaymentProviderUnavailable


@shared_task(
    name=stripe_events.PROCESS_TASK,
    autoretry_for=(PaymentProviderUnavailable,),
    retry_backoff=True,
    max_retries=5,
)
def process_stripe_event(event_id: str) -> None:
    stripe_events.stripe_event_process(event_id=event_id)


@shared_task(name="billing.report_metered_usage")
def report_metered_usage() -> int:
    return metering.usage_report_to_stripe()


@shared_task(name="billing.resend_unprocessed_stripe_events")
def resend_unprocessed_stripe_events() -> int:
    return stripe_events.stripe_events_resend_unprocessed()
