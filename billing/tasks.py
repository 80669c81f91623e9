"""Celery adapters of commerce: load by id, call a service."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from billing import metering, reconciler, services, stripe_outbox, stripe_sync, stripe_webhooks
from billing.errors import PaymentProviderUnavailable
from billing.stripe_sync import StaleRead


@shared_task(
    name=stripe_webhooks.PROCESS_TASK,
    autoretry_for=(PaymentProviderUnavailable, StaleRead),
    retry_backoff=True,
    max_retries=5,
)
def process_stripe_event(event_id: str) -> None:
    stripe_webhooks.stripe_event_process(event_id=event_id)


@shared_task(name=stripe_outbox.SEND_TASK)
def send_stripe_intent(intent_id: str) -> str:
    return stripe_sync.intent_run(intent_id=int(intent_id)).status


@shared_task(name="billing.report_metered_usage")
def report_metered_usage() -> dict:
    run = metering.usage_report_to_stripe()
    return {"sent": run.sent, "failed": run.failed}


@shared_task(name="billing.resend_unprocessed_stripe_events")
def resend_unprocessed_stripe_events() -> int:
    return stripe_webhooks.stripe_events_resend_unprocessed()


@shared_task(name="billing.send_due_stripe_intents")
def send_due_stripe_intents() -> int:
    return stripe_sync.intents_send_due()


@shared_task(name="billing.sweep_licences_and_usage")
def sweep_licences_and_usage() -> dict:
    """Wind-downs whose paid period is over end; calls nobody settled are settled failed."""
    return {
        "licences_ended": services.licences_end_wound_down(),
        "calls_settled_failed": services.usage_settle_stale(
            older_than=timedelta(seconds=settings.SERVING_TIMEOUT_SECONDS * 2 + 60)
        ),
    }


@shared_task(name="billing.reconcile_with_stripe")
def reconcile_with_stripe() -> dict:
    run = reconciler.reconcile()
    return {"repaired": run.repaired, "flagged": run.flagged, "recovered": run.events_recovered}
