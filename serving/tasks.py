"""Celery adapter of the engine: ``serving.tasks.infer`` on the ``inference`` queue.

Run the inference worker with the threads pool (``-P threads --concurrency 64``): every
message waits in its own thread on this process's one batcher, which is how requests
from separate messages meet in one forward pass (see serving/engine/batching.py). The
engine (torch, transformers, peft) is imported on first use, never by web processes.
"""

from celery import shared_task
from celery.signals import worker_ready

from serving.protocol import QUEUE, TASK_NAME


@worker_ready.connect
def _warm_engine(sender, **_kwargs) -> None:
    # A worker that consumes `inference` builds its engine (and imports torch) at start,
    # not inside the first buyer's request.
    # Only where tasks run in this process (threads or solo pool): a prefork parent
    # would load models its children cannot use.
    in_process = type(sender.pool).__module__.rsplit(".", 1)[-1] in ("thread", "solo")
    if in_process and QUEUE in set(sender.app.amqp.queues.consume_from):
        from serving.engine.service import engine_get

        engine_get()


@shared_task(name=TASK_NAME)
def infer(request: dict) -> dict:
    """One protocol ``InferenceRequest`` dict in, an ``InferenceResult`` or error dict out.
    A streamed call is settled here, on the server, when its stream ends (billed once a
    token reached the stream), whether or not its client read to the end."""
    from serving.engine.service import engine_get, engine_infer

    answer = engine_infer(request=request)
    if request.get("stream") and request.get("request_id"):
        settle_stream(str(request["request_id"]), engine_get().redis)
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
