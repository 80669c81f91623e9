"""Mixed-adapter micro-batching across Celery messages: one batcher thread per worker process.

How requests meet in one batch: the inference worker runs Celery's ``threads`` pool
(``-P threads``, concurrency ≥ the batch size). Each ``serving.tasks.infer`` message runs
in its own pool thread, which hands its request to this process's single ``Batcher`` and
blocks on a future. The batcher thread takes the first waiting request, keeps taking more
until the batch holds ``max_size`` rows or ``max_wait_ms`` have passed since that first
one, groups them by (base model, task), loads the adapters they name, and runs each group
as ONE forward pass (the gathered batched-LoRA), then resolves every future.

Why a batcher thread and not the ``celery-batches`` task class:
- one process holds each base once, and only threads share it (a prefork pool would copy
  the model into every child); the GIL is released inside torch's kernels;
- each message stays an ordinary Celery task: its own result in the result backend, its
  own ack, its own time limit, so nothing in the gateway knows batching exists;
- per-request work (streaming tokens to Redis, the cancel key, deadlines, one bad adapter
  failing only its own request) needs per-request identity, which celery-batches turns
  into a list of ``SimpleRequest`` whose results must be written by hand;
- no extra dependency, and the batch-closing rule (size or wait) is ours to test.
Trade-off: the batcher runs one batch at a time; a generation batch holds the device until
its longest row finishes (rows that finish or are cancelled leave the batch, but new
requests join only the next batch: no iteration-level continuous batching yet).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from serving.protocol import InferenceRequest

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    request: InferenceRequest
    future: Future = field(default_factory=Future)
    rows: int = 1
    received_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Collects pending requests into batches and hands each batch to ``run_batch``.

    ``run_batch(list[Pending])`` must resolve every future it is given (the batcher
    resolves any it left open with the exception it raised, so no caller hangs).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Pending]], None],
        *,
        max_size: int,
        max_wait_ms: float,
    ):
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000
        self.inbox: queue.Queue[Pending] = queue.Queue()
        self.batches_run = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="serving-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: InferenceRequest, rows: int = 1) -> Future:
        pending = Pending(request=request, rows=rows)
        self.inbox.put(pending)
        return pending.future

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def collect(self) -> list[Pending]:
        """One batch: waits for a first request, then closes at max size or max wait."""
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch, rows = [first], first.rows
        closes_at = time.monotonic() + self.max_wait
        while rows < self.max_size:
            remaining = closes_at - time.monotonic()
            try:
                pending = (
                    self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait()
                )
            except queue.Empty:
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self.collect()
            if not batch:
                continue
            try:
                self.run_batch(batch)
            except Exception as exc:  # resolve every waiter; the worker keeps serving
                logger.exception("serving: a batch of %d requests failed", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            self.batches_run += 1
