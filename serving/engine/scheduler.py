"""Who runs next, decided apart from the forward passes (vLLM's scheduler / runner split).

Nothing here touches torch, Redis or a thread: each lane (``batching.py``) holds one
scheduler per base, tells it what arrived, finished or was aborted, and asks it which
requests run at the next step; the runner (``runner.py``) then does the forward passes.

Two priorities: ``interactive`` (buyers' calls, the default) and ``batch`` (rows of an
OpenAI Batch API job). Batch requests only take the room interactive ones leave:

- classification (``ClassificationScheduler``): interactive rows run without batch rows
  beside them (a forward of the interactive load's size, not a full one), and while
  interactive calls keep arriving a forward of batch rows only is cut to a quarter of the
  batch size; so an interactive request waits behind at most one small batch forward.
  With no interactive call for ``QUIET_SCHEDULES`` batches, batch rows fill whole
  forwards (measured in bench/serving_load.py: `cls_p95_with_batch_over_alone`);
- generation (``GenerationScheduler``, iteration-level): at every decoding step the running
  rows go on, then waiting requests are admitted while rows and the prefill token budget
  allow, interactive first; an interactive request that finds every row taken by running
  batch rows preempts the latest of them (vLLM's recompute preemption: the row goes back to
  the head of the batch queue with the tokens it made, and is prefilled again, prompt plus
  those tokens, when room comes back), so it waits at most one step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from serving.protocol import PRIORITIES, PRIORITY_BATCH, PRIORITY_INTERACTIVE


@dataclass(eq=False)
class ScheduledRequest:
    """The scheduler's view of one request: what it costs, not what it carries."""

    request_id: str
    priority: str = PRIORITY_INTERACTIVE
    rows: int = 1  # classification: inputs; generation: 1
    prefill_tokens: int = 0  # generation: tokens to prefill when (re)admitted
    arrival: int = 0  # order of arrival in its lane (a counter: no ties)
    payload: Any = None  # the lane's own object for this request

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")


@dataclass
class WaitingQueues:
    """One FIFO per priority, served in ``PRIORITIES`` order."""

    queues: dict[str, deque[ScheduledRequest]] = field(
        default_factory=lambda: {priority: deque() for priority in PRIORITIES}
    )

    def push(self, request: ScheduledRequest) -> None:
        self.queues[request.priority].append(request)

    def push_front(self, request: ScheduledRequest) -> None:
        self.queues[request.priority].appendleft(request)

    def remove(self, request_id: str) -> ScheduledRequest | None:
        for queue in self.queues.values():
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    return request
        return None

    def depth(self, priority: str) -> int:
        return len(self.queues[priority])

    def rows(self) -> int:
        return sum(s.rows for queue in self.queues.values() for s in queue)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def __iter__(self) -> Iterator[ScheduledRequest]:
        for priority in PRIORITIES:
            yield from self.queues[priority]


class ClassificationScheduler:
    """Forms the next classification batch (one forward pass) from the waiting requests."""

    QUIET_SCHEDULES = 16  # batches without an interactive row before batch rows fill all

    def __init__(self, *, max_rows: int):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.max_rows = max_rows
        self.waiting = WaitingQueues()
        self._since_interactive = self.QUIET_SCHEDULES  # schedules since one ran

    def add(self, request: ScheduledRequest) -> None:
        self.waiting.push(request)

    def abort(self, request_id: str) -> ScheduledRequest | None:
        return self.waiting.remove(request_id)

    def full(self) -> bool:
        """Enough rows wait to fill a batch: no reason to wait for more."""
        return self.waiting.rows() >= self.max_rows

    def batch_rows_limit(self) -> int:
        """Rows a forward of batch rows only may take: a quarter of a batch while
        interactive calls were seen lately, a whole one when they stopped."""
        if self._since_interactive < self.QUIET_SCHEDULES:
            return max(1, self.max_rows // 4)
        return self.max_rows

    def schedule(self) -> list[ScheduledRequest]:
        """The next batch: the waiting interactive requests in arrival order; only when
        none waits, batch requests, up to ``batch_rows_limit()`` rows. A request that does
        not fit ends its priority's turn (it stays at the head: no overtaking within a
        priority), except that an empty batch takes its first request whatever its size
        (the runner cuts it into ``max_rows`` chunks)."""
        batch: list[ScheduledRequest] = []
        rows = 0
        for priority in PRIORITIES:
            if batch:
                break  # batch rows never ride along with interactive ones
            limit = self.max_rows if priority == PRIORITY_INTERACTIVE else self.batch_rows_limit()
            queue = self.waiting.queues[priority]
            while queue and (not batch or rows + queue[0].rows <= limit):
                request = queue.popleft()
                batch.append(request)
                rows += request.rows
        if batch and batch[0].priority == PRIORITY_INTERACTIVE:
            self._since_interactive = 0
        elif batch:
            self._since_interactive += 1
        assert rows <= self.max_rows or len(batch) == 1, (rows, self.max_rows)
        return batch


@dataclass
class GenerationPlan:
    """One step's decisions: who joins the running batch (prefill first), who leaves it to
    wait again (preempted, state kept for recompute)."""

    admitted: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[ScheduledRequest] = field(default_factory=list)


class GenerationScheduler:
    """Iteration-level scheduling of one base's generation batch.

    ``running`` are the requests in the decode batch; ``schedule()`` is called once per
    decoding step, after the lane removed what finished or was aborted (``finish``)."""

    def __init__(self, *, max_running: int, max_prefill_tokens: int):
        if max_running < 1 or max_prefill_tokens < 1:
            raise ValueError("max_running and max_prefill_tokens must be at least 1")
        self.max_running = max_running
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting = WaitingQueues()
        self.running: list[ScheduledRequest] = []

    def add(self, request: ScheduledRequest) -> None:
        self.waiting.push(request)

    def finish(self, request: ScheduledRequest) -> None:
        """It left the batch (finished, cancelled, failed); idempotent."""
        if request in self.running:
            self.running.remove(request)

    def abort(self, request_id: str) -> ScheduledRequest | None:
        """Take a waiting request out (the caller aborts a running one through the runner,
        then calls ``finish``)."""
        return self.waiting.remove(request_id)

    def has_work(self) -> bool:
        return bool(self.running or len(self.waiting))

    def schedule(self) -> GenerationPlan:
        """Advance every running request (they stay), then admit waiting ones, interactive
        first, while rows are free and the step's prefill tokens fit (the first admission
        always fits, or a long prompt would wait forever). An interactive request with no
        free row preempts the latest running batch request. Within a priority nobody
        overtakes: a request that does not fit ends its priority's turn."""
        plan = GenerationPlan()
        prefill = 0
        for priority in PRIORITIES:
            queue = self.waiting.queues[priority]
            while queue:
                request = queue[0]
                if plan.admitted and prefill + request.prefill_tokens > self.max_prefill_tokens:
                    break
                room = len(self.running) < self.max_running
                if not room and (priority != PRIORITY_INTERACTIVE or not self._preempt_one(plan)):
                    break
                queue.popleft()
                self.running.append(request)
                plan.admitted.append(request)
                prefill += request.prefill_tokens
            if queue:
                break  # this priority still waits: lower ones wait behind it
        assert len(self.running) <= self.max_running, (len(self.running), self.max_running)
        assert prefill <= self.max_prefill_tokens or len(plan.admitted) == 1, prefill
        assert not set(plan.admitted) & set(plan.preempted)
        return plan

    def _preempt_one(self, plan: GenerationPlan) -> bool:
        """Send the latest-arrived running batch request back to the head of its queue."""
        victims = [
            s for s in self.running if s.priority == PRIORITY_BATCH and s not in plan.admitted
        ]
        if not victims:
            return False
        victim = max(victims, key=lambda s: s.arrival)
        self.running.remove(victim)
        self.waiting.push_front(victim)
        plan.preempted.append(victim)
        return True
