"""Celery adapters of the platform's own plumbing: the domain-event outbox."""

from celery import shared_task

from marketplace import events


@shared_task(name=events.DELIVER_TASK)
def deliver_domain_event(delivery_id: str) -> None:
    events.event_deliver(delivery_id=int(delivery_id))


@shared_task(name="marketplace.deliver_due_domain_events")
def deliver_due_domain_events() -> int:
    return events.events_deliver_due()
