"""The two lanes of an inference worker process: classification and generation.

How requests meet: the worker hands each request to ``Engine.infer`` in a thread of its own
(a threads pool), which submits it to its task's lane and blocks on a future. Each lane is
one thread with its own waiting queue, its own scheduler (``scheduler.py``: admission,
priorities, preemption; no torch) and its own forward passes (``runner.py``), so a
classification never waits behind a generation: the two lanes' forwards run side by side
(torch releases the GIL inside its kernels), on bases they do not share.

- ``ClassificationLane``: micro-batches. It takes the oldest waiting request, waits until
  ``max_size`` rows wait or ``max_wait_ms`` have passed since that request arrived, and
  runs the batch the scheduler forms (interactive rows first, batch rows in what is left)
  as one forward pass per (base, head) through ``run_batch``.
- ``GenerationLane``: iteration-level (continuous) batching, per base. Every loop turn is
  one decoding step: the scheduler decides who is preempted and who joins; the running
  rows advance one token; the joining rows are prefilled and merged into the running
  batch (``runner.DecodeBatch``); then every row is checked (one Redis MGET of the cancel
  keys, and the deadlines): a finished, cancelled or late row leaves at once and its
  request is answered. A new request therefore waits at most one step to start, and a
  long generation holds no one else back.

Admission control: each lane counts its waiting requests per priority; past
``max_waiting``, ``submit`` raises ``Overloaded`` at once (the engine answers
``overloaded`` with a retry-after estimated from the lane's recent drain rate), instead of
letting a request wait to time out. ``depth()`` is what the lane holds now.

Why threads in one process (and not ``celery-batches`` or a process per lane): one process
holds each base once and only threads share it; each request keeps its own identity
(streaming, its cancel key, its deadline, one bad adapter failing only its own request);
and the rules (batch closing, admission, priorities) are ours to test.

CPU threads: while both lanes run forwards, each gets half of torch's intra-op threads
(``ThreadShare``), so their kernels do not oversubscribe the cores.

Thread safety: only a lane's own thread runs its forwards and loads its bases' adapters;
the registry's lock guards its maps, each base's lock is held by forwards and evictions,
and a running batch pins its adapters (``registry.pin``) so the other lane's loads never
evict them. A tokenizer is only used by the lane of its base.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from serving.engine.registry import EngineError, LoadedBase, ModelRegistry, adapter_name_for
from serving.engine.runner import DecodeBatch, GenerationRow, RowState
from serving.engine.scheduler import (
    ClassificationScheduler,
    GenerationScheduler,
    ScheduledRequest,
)
from serving.protocol import PRIORITIES, ErrorCode, InferenceRequest

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.2  # how often an idle lane looks at its stop flag


class ThreadShare:
    """Splits torch's intra-op threads between the lanes that are running forwards: all
    of them for a lane alone, an equal share each while both run. Two lanes each using
    every core oversubscribe the CPU (OpenMP threads wait on each other's time slices):
    measured on 2 cores with 8 SmolLM2 generations running, classification p95 rose 1.6x
    that way and 1.1x with the threads shared, and generation kept more of its speed
    (bench/serving.py: cls_p95_mixed_over_alone_engine). The count is process-wide, so it
    is set on every change of who runs (a few microseconds)."""

    def __init__(self, total: int | None = None):
        self.total = total or torch.get_num_threads()
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def running(self, lane: str) -> Iterator[None]:
        self._change(lane, +1)
        try:
            yield
        finally:
            self._change(lane, -1)

    def _change(self, lane: str, delta: int) -> None:
        with self._lock:
            self._running[lane] += delta
            lanes = sum(1 for count in self._running.values() if count > 0)
            threads = max(1, self.total // max(lanes, 1))
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


class Overloaded(Exception):
    """The lane's waiting queue for this priority is full: answer now, do not queue."""

    def __init__(self, lane: str, waiting: int, retry_after: int):
        super().__init__(
            f"The {lane} lane has {waiting} requests waiting, its limit; retry in {retry_after} s."
        )
        self.retry_after = retry_after


@dataclass(eq=False)
class Pending:
    request: InferenceRequest
    future: Future = field(default_factory=Future)
    rows: int = 1
    received_at: float = field(default_factory=time.monotonic)
    # generation: set by the lane once the prompt is tokenized
    base: LoadedBase | None = None
    state: RowState | None = None
    scheduled: ScheduledRequest | None = None
    pinned: bool = False  # its adapter is pinned in the registry while it runs


class Lane:
    """What both lanes share: the thread, the waiting count per priority and its bound,
    aborts, and the drain rate behind ``retry_after``."""

    name = "lane"

    def __init__(
        self,
        *,
        max_waiting: int,
        fail: Callable[[Pending, str, str], None],
        threads: ThreadShare | None = None,
    ):
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self.max_waiting = max_waiting
        self.fail = fail
        self.threads = threads or ThreadShare()
        self._cond = threading.Condition()
        self._waiting: Counter[str] = Counter()  # per priority: submitted, not yet running
        self._running = 0
        self._aborts: set[str] = set()
        self._arrivals = itertools.count()
        self._answered: deque[float] = deque(maxlen=256)  # when requests left the lane
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serving-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def submit(self, request: InferenceRequest, rows: int = 1) -> Future:
        """Queue ``request``; raises ``Overloaded`` when its priority's queue is full."""
        with self._cond:
            waiting = self._waiting[request.priority]
            if waiting >= self.max_waiting:
                raise Overloaded(self.name, waiting, self._retry_after(waiting))
            self._waiting[request.priority] += 1
            pending = Pending(request=request, rows=rows)
            self._enqueue(pending)
            self._cond.notify()
        return pending.future

    def abort(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting: dropped; running: it leaves at the next
        step). Idempotent; unknown ids are ignored."""
        with self._cond:
            self._aborts.add(request_id)
            self._cond.notify()

    def depth(self) -> dict[str, Any]:
        """What the lane holds now (for the gateway's admission decisions and metrics)."""
        with self._cond:
            return {
                "waiting": {priority: self._waiting[priority] for priority in PRIORITIES},
                "running": self._running,
                "max_waiting": self.max_waiting,
            }

    # --------------------------------------------------------------- internals
    def _enqueue(self, pending: Pending) -> None:  # under self._cond
        raise NotImplementedError

    def _iterate(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._iterate()
            except Exception:  # a bug in the loop itself: log it, keep the worker serving
                logger.exception("serving: the %s lane's loop failed", self.name)
                time.sleep(0.05)

    def _left_waiting(self, pendings: Sequence[Pending], running: int = 0) -> None:
        with self._cond:
            for pending in pendings:
                self._waiting[pending.request.priority] -= 1
            self._running += running

    def _answered_now(self, count: int) -> None:
        now = time.monotonic()
        with self._cond:
            self._answered.extend([now] * count)

    def _retry_after(self, waiting: int) -> int:  # under self._cond
        """Seconds until ``waiting`` requests should have drained at the recent rate."""
        if len(self._answered) < 2:
            return 1
        span = max(self._answered[-1] - self._answered[0], 1e-3)
        rate = (len(self._answered) - 1) / span
        return int(min(max(math.ceil(waiting / rate), 1), 60))


class ClassificationLane(Lane):
    """Micro-batches classification requests; ``run_batch(list[Pending])`` must resolve
    every future it is given (the lane resolves any left open, so no caller hangs)."""

    name = "classification"

    def __init__(
        self,
        run_batch: Callable[[list[Pending]], None],
        *,
        fail: Callable[[Pending, str, str], None],
        max_size: int,
        max_wait_ms: float,
        max_waiting: int,
        threads: ThreadShare | None = None,
    ):
        super().__init__(max_waiting=max_waiting, fail=fail, threads=threads)
        self.run_batch = run_batch
        self.max_wait = max_wait_ms / 1000
        self.scheduler = ClassificationScheduler(max_rows=max_size)
        self.batches_run = 0
        self.start()

    def _enqueue(self, pending: Pending) -> None:
        scheduled = ScheduledRequest(
            request_id=pending.request.request_id,
            priority=pending.request.priority,
            rows=pending.rows,
            arrival=next(self._arrivals),
            payload=pending,
        )
        pending.scheduled = scheduled
        self.scheduler.add(scheduled)

    def collect(self) -> list[Pending]:
        """The next batch: waits for a first request, then until the batch is full or the
        oldest waiting request has waited ``max_wait``."""
        with self._cond:
            if not len(self.scheduler.waiting):
                self._cond.wait(IDLE_POLL_SECONDS)
            aborted = self._drop_aborted()
            batch: list[Pending] = []
            if len(self.scheduler.waiting):
                oldest = min(s.payload.received_at for s in self.scheduler.waiting)
                while not self.scheduler.full() and not self._stop.is_set():
                    remaining = oldest + self.max_wait - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                aborted += self._drop_aborted()
                batch = [request.payload for request in self.scheduler.schedule()]
                for pending in batch:
                    self._waiting[pending.request.priority] -= 1
                self._running = sum(p.rows for p in batch)
        for pending in aborted:
            self.fail(pending, ErrorCode.ENGINE_ERROR, "Aborted while waiting.")
        return batch

    def _drop_aborted(self) -> list[Pending]:  # under self._cond
        dropped = []
        for request_id in self._aborts:
            request = self.scheduler.abort(request_id)
            if request is not None:
                self._waiting[request.priority] -= 1
                dropped.append(request.payload)
        self._aborts.clear()
        return dropped

    def _iterate(self) -> None:
        batch = self.collect()
        if not batch:
            return
        try:
            with self.threads.running(self.name):
                self.run_batch(batch)
        except Exception as exc:  # resolve every waiter; the worker keeps serving
            logger.exception("serving: a classification batch of %d requests failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            with self._cond:
                self._running = 0
            self._answered_now(len(batch))
            self.batches_run += 1


class GenerationHooks(Protocol):
    """What the generation lane needs from the engine (the protocol side of a request)."""

    registry: ModelRegistry

    def prepare_generation(
        self, request: InferenceRequest
    ) -> tuple[LoadedBase, GenerationRow, list[int]]:
        """The base, the row and its prompt's token ids; raises ``EngineError``."""

    def finish_generation(self, pending: Pending, state: RowState) -> None: ...

    def flush_streams(self) -> None:
        """Write the tokens streamed since the last flush (before any answer)."""

    def cancelled(self, pendings: Sequence[Pending]) -> set[int]:
        """Positions of ``pendings`` whose cancel key is set or whose deadline passed."""


@dataclass
class _BaseBatch:
    """One base's scheduler and running batch (each base decodes in its own forwards)."""

    base: LoadedBase
    scheduler: GenerationScheduler
    batch: DecodeBatch


class GenerationLane(Lane):
    """Iteration-level batching of generation requests, one decode batch per base."""

    name = "generation"

    def __init__(
        self,
        hooks: GenerationHooks,
        *,
        fail: Callable[[Pending, str, str], None],
        max_running: int,
        max_prefill_tokens: int,
        max_waiting: int,
        threads: ThreadShare | None = None,
    ):
        super().__init__(max_waiting=max_waiting, fail=fail, threads=threads)
        self.hooks = hooks
        self.max_running = max_running
        self.max_prefill_tokens = max_prefill_tokens
        self._inbox: list[Pending] = []
        self._bases: dict[int, _BaseBatch] = {}
        self.steps_run = 0
        self.start()

    def _enqueue(self, pending: Pending) -> None:
        self._inbox.append(pending)  # tokenized on the lane's thread (its tokenizer's only user)

    def _busy(self) -> bool:
        return any(b.scheduler.has_work() for b in self._bases.values())

    def _iterate(self) -> None:
        with self._cond:
            if not self._inbox and not self._aborts and not self._busy():
                self._cond.wait(IDLE_POLL_SECONDS)
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
        for pending in inbox:
            self._prepare(pending)
        for group in list(self._bases.values()):
            self._drop_waiting(group, aborts)
            if group.scheduler.has_work():
                try:
                    with self.threads.running(self.name):
                        self._step(group, aborts)
                except Exception as exc:
                    logger.exception("serving: a generation step on %s failed", group.base.slug)
                    self._fail_running(group, f"Engine error: {exc}")
        with self._cond:
            self._running = sum(len(b.scheduler.running) for b in self._bases.values())

    def _prepare(self, pending: Pending) -> None:
        """Render and tokenize the prompt, check its length: then it waits for a row."""
        try:
            base, row, prompt_ids = self.hooks.prepare_generation(pending.request)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("serving: preparing request %s failed", pending.request.request_id)
            self._left_waiting([pending])
            self._answered_now(1)
            self.fail(pending, getattr(exc, "code", ErrorCode.ENGINE_ERROR), str(exc))
            return
        pending.base = base
        pending.state = RowState(row, prompt_ids, base.device)
        pending.scheduled = ScheduledRequest(
            request_id=pending.request.request_id,
            priority=pending.request.priority,
            prefill_tokens=len(prompt_ids),
            arrival=next(self._arrivals),
            payload=pending,
        )
        group = self._bases.get(id(base))
        if group is None:
            group = self._bases[id(base)] = _BaseBatch(
                base=base,
                scheduler=GenerationScheduler(
                    max_running=self.max_running, max_prefill_tokens=self.max_prefill_tokens
                ),
                batch=DecodeBatch(base),
            )
        group.scheduler.add(pending.scheduled)

    def _drop_waiting(self, group: _BaseBatch, aborts: set[str]) -> None:
        """Waiting requests that were aborted or whose deadline passed leave the queue: an
        error, or, for a preempted one that had started, its answer so far (cancelled)."""
        now = time.time()
        dropped = []
        for scheduled in list(group.scheduler.waiting):
            request = scheduled.payload.request
            late = request.deadline is not None and now > request.deadline
            if late or request.request_id in aborts:
                group.scheduler.abort(request.request_id)
                dropped.append((scheduled.payload, late))
        if not dropped:
            return
        self._left_waiting([pending for pending, _ in dropped])
        self._answered_now(len(dropped))
        for pending, late in dropped:
            if pending.state is not None and pending.state.token_ids:
                pending.state.stop("cancelled")
                self.hooks.flush_streams()
                self.hooks.finish_generation(pending, pending.state)
            elif late:
                self.fail(pending, ErrorCode.DEADLINE_EXCEEDED, "Deadline passed while waiting.")
            else:
                self.fail(pending, ErrorCode.ENGINE_ERROR, "Aborted while waiting.")

    def _step(self, group: _BaseBatch, aborts: set[str]) -> None:
        """One decoding step of one base's batch (see the module docstring)."""
        batch, scheduler = group.batch, group.scheduler
        plan = scheduler.schedule()
        admitted = [scheduled.payload for scheduled in plan.admitted]
        preempted = [scheduled.payload for scheduled in plan.preempted]
        self._left_waiting(admitted)
        if preempted:  # back to waiting, state kept: prefilled again on re-admission
            batch.leave([pending.state for pending in preempted])
            self._unpin(group, preempted)
            with self._cond:
                for pending in preempted:
                    pending.scheduled.prefill_tokens = len(pending.state.prefill_ids)
                    self._waiting[pending.request.priority] += 1
        by_state = {id(s.payload.state): s.payload for s in scheduler.running}

        # The running rows advance one token; those that finish are answered now ...
        self._answer(group, [by_state[id(state)] for state in batch.step()])
        # ... then the admitted ones are prefilled and join the batch ...
        finished = self._join(group, admitted)
        # ... and, after every token, rows whose client left, whose deadline passed or that
        # were aborted leave at once.
        running = [by_state[id(state)] for state in batch.states]
        gone = self.hooks.cancelled(running) if running else set()
        stopped = [
            pending
            for position, pending in enumerate(running)
            if position in gone or pending.request.request_id in aborts
        ]
        for pending in stopped:
            pending.state.stop("cancelled")
        batch.leave([pending.state for pending in stopped])
        self._answer(group, [by_state[id(state)] for state in finished] + stopped)
        self.steps_run += 1

    def _answer(self, group: _BaseBatch, done: list[Pending]) -> None:
        """Requests whose rows left the batch: their streamed tokens first, then answers."""
        self.hooks.flush_streams()
        if not done:
            return
        self._unpin(group, done)
        for pending in done:
            group.scheduler.finish(pending.scheduled)
            self.hooks.finish_generation(pending, pending.state)
        self._answered_now(len(done))

    def _join(self, group: _BaseBatch, admitted: list[Pending]) -> list[RowState]:
        """Prefill the admitted requests still wanted, with their adapters loaded and
        pinned, into the batch; returns the rows already finished (or never started:
        their client left while they waited)."""
        registry, scheduler = self.hooks.registry, group.scheduler
        gone = self.hooks.cancelled(admitted) if admitted else set()
        finished, joining = [], []
        for position, pending in enumerate(admitted):
            if position in gone:  # checked as it leaves the queue: no prefill for nobody
                pending.state.stop("cancelled")
                finished.append(pending.state)
                continue
            adapter = pending.state.row.adapter
            if adapter is not None:
                try:
                    registry.ensure_adapters(group.base, [adapter])
                except EngineError as exc:  # fails this request only
                    scheduler.finish(pending.scheduled)
                    self._answered_now(1)
                    self.fail(pending, exc.code, str(exc))
                    continue
                registry.pin(group.base, [adapter_name_for(adapter.sha256)])
                pending.pinned = True
            joining.append(pending)
        if not joining:
            return finished
        try:
            return finished + group.batch.join([pending.state for pending in joining])
        except EngineError as exc:  # the joining rows fail; the running ones go on
            self._unpin(group, joining)
            for pending in joining:
                scheduler.finish(pending.scheduled)
                self.fail(pending, exc.code, str(exc))
            self._answered_now(len(joining))
            return finished

    def _unpin(self, group: _BaseBatch, pendings: Sequence[Pending]) -> None:
        pinned = [p for p in pendings if p.pinned]
        for pending in pinned:
            pending.pinned = False
        names = [adapter_name_for(p.state.row.adapter.sha256) for p in pinned]
        if names:
            self.hooks.registry.unpin(group.base, names)

    def _fail_running(self, group: _BaseBatch, message: str) -> None:
        """A step crashed: its running rows fail (answered), the batch starts empty."""
        running = [scheduled.payload for scheduled in group.scheduler.running]
        group.batch.close()
        self.hooks.flush_streams()
        self._unpin(group, running)
        for pending in running:
            group.scheduler.finish(pending.scheduled)
            if not pending.future.done():
                self.fail(pending, ErrorCode.ENGINE_ERROR, message)
        self._answered_now(len(running))
