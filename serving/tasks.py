"""The inference worker's side: its engine, and the consumer that feeds it.

Run the inference worker as a Celery worker on the ``inference`` queue with the threads
pool (``-P threads --concurrency 64``): at start it builds its engine (torch and the
models load here, never in web processes) and starts a ``serving.dispatch.Consumer``
that reads interactive calls from Redis in batches and hands each to the engine in a
thread of its own, where the batcher joins them into forward passes (see
serving/engine/batching.py). Celery keeps the process (signals, supervision, the
``inference`` queue for batch work); interactive calls no longer travel as Celery tasks.

``serving.tasks.infer`` stays as a Celery entry to the same engine, for batch work and
operators' checks.
"""

import logging

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from serving.protocol import QUEUE, TASK_NAME

logger = logging.getLogger(__name__)
_consumer = None


@worker_ready.connect
def _start_engine(sender, **_kwargs) -> None:
    # Only where tasks run in this process (threads or solo pool): a prefork parent
    # would load models its children cannot use.
    global _consumer
    in_process = type(sender.pool).__module__.rsplit(".", 1)[-1] in ("thread", "solo")
    if in_process and QUEUE in set(sender.app.amqp.queues.consume_from):
        from serving.dispatch import Consumer
        from serving.engine.service import engine_get

        engine = engine_get()  # the first buyer's call does not wait for torch
        _consumer = Consumer(engine.redis, answer=_answer, finished=_finished).start()
        logger.info("serving: reading interactive calls as %s", _consumer.name)


@worker_shutdown.connect
def _stop_engine(**_kwargs) -> None:
    if _consumer is not None:
        _consumer.stop()


def _answer(request: dict) -> dict:
    from serving.engine.service import engine_infer

    logger.info("serving: request %s received", request.get("request_id"))
    return engine_infer(request=request)


def _finished(request: dict, answer: dict) -> None:
    """A streamed call is settled here, on the server, when its stream ends (billed once
    a token reached the stream), whether or not its client read to the end."""
    from django.db import close_old_connections

    from serving.engine.service import engine_get

    if request.get("stream") and request.get("request_id"):
        try:
            settle_stream(str(request["request_id"]), engine_get().redis)
        finally:
            close_old_connections()


@shared_task(name=TASK_NAME)
def infer(request: dict) -> dict:
    """One protocol ``InferenceRequest`` dict in, an ``InferenceResult`` or error dict out."""
    answer = _answer(request)
    _finished(request, answer)
    return answer


def settle_stream(request_id: str, redis_client) -> None:
    """Settle a streamed call by what its stream holds: `ok` when a token reached it or
    it finished, `error` when it failed before any token. The first settlement wins (the
    gateway may have settled it already); a call without a ledger row (the owner's)
    has nothing to settle."""
    from billing.models import UsageStatus
    from billing.services import usage_settle_if_recorded
    from serving.protocol import stream_key

    delivered, done = 0, False
    if redis_client is not None:
        for _id, fields in redis_client.xrange(stream_key(request_id)):
            kind = fields.get(b"type", b"")
            if kind == b"token" and fields.get(b"text"):
                delivered += 1
            done = done or kind == b"done"
    status = UsageStatus.OK if delivered or done else UsageStatus.ERROR
    usage_settle_if_recorded(idempotency_key=request_id, status=status)


# --- batch inference (serving.batches, serving.batch_runner) ----------------------------


@shared_task(
    name="serving.tasks.batch_run", acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def batch_run(batch_id: str) -> str:
    """One slice of a batch's rows through this worker's engine (on the inference queue,
    so only a worker that holds an engine takes it); sent on again while rows are left.
    A worker that dies mid-slice leaves its lease to lapse: the sweep below sends the
    batch again and the next worker resumes at its first unanswered row."""
    from serving.batch_runner import batch_work

    outcome = batch_work(batch_id=batch_id)  # a lease token of its own per run
    if outcome == "more":
        batch_run.apply_async(args=[batch_id])
    return outcome


@shared_task(name="serving.batches_resume_stalled", ignore_result=True)
def batches_resume_stalled() -> int:
    """Beat (default queue): resend the batches no worker holds."""
    from serving.batches import batches_resume_stalled as resume

    return resume()
