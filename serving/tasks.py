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
    """One protocol ``InferenceRequest`` dict in, an ``InferenceResult`` or error dict out."""
    from serving.engine.service import engine_infer

    return engine_infer(request=request)
