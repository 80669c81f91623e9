"""The scheduler alone (no torch, no threads): who runs at the next step, within budgets,
interactive before batch, nobody overtaking within a priority."""

import pytest

from serving.engine.scheduler import (
    ClassificationScheduler,
    GenerationScheduler,
    ScheduledRequest,
)
from serving.protocol import PRIORITY_BATCH, PRIORITY_INTERACTIVE

_arrivals = iter(range(10**6))


def request(name: str, priority: str = PRIORITY_INTERACTIVE, rows: int = 1, prefill: int = 10):
    return ScheduledRequest(
        request_id=name,
        priority=priority,
        rows=rows,
        prefill_tokens=prefill,
        arrival=next(_arrivals),
    )


def names(requests) -> list[str]:
    return [r.request_id for r in requests]


def test_an_unknown_priority_is_refused():
    with pytest.raises(ValueError, match="priority"):
        request("x", priority="urgent")


# ------------------------------------------------------------------ classification
def test_interactive_rows_run_without_batch_rows_and_batch_forwards_stay_small_meanwhile():
    scheduler = ClassificationScheduler(max_rows=8)
    for r in [
        request("b1", PRIORITY_BATCH, rows=1),
        request("i1", rows=2),
        request("b2", PRIORITY_BATCH, rows=1),
        request("i2", rows=2),
        *[request(f"b{n}", PRIORITY_BATCH, rows=1) for n in range(3, 12)],
    ]:
        scheduler.add(r)

    # the interactive rows alone, in arrival order: a small forward, soon over
    assert names(scheduler.schedule()) == ["i1", "i2"]
    # then batch rows, a quarter of a batch at a time while interactive calls come
    assert names(scheduler.schedule()) == ["b1", "b2"]
    assert names(scheduler.schedule()) == ["b3", "b4"]
    # and whole batches once no interactive call came for QUIET_SCHEDULES forwards
    for _ in range(ClassificationScheduler.QUIET_SCHEDULES - 2):
        scheduler.add(request("filler", PRIORITY_BATCH, rows=1))
        scheduler.schedule()
    assert scheduler.batch_rows_limit() == 8
    for n in range(10):
        scheduler.add(request(f"late{n}", PRIORITY_BATCH, rows=1))
    assert len(scheduler.schedule()) == 8


def test_a_request_that_does_not_fit_waits_at_the_head_and_nobody_of_its_priority_overtakes():
    scheduler = ClassificationScheduler(max_rows=4)
    for r in [request("i1", rows=3), request("i2", rows=3), request("i3", rows=1)]:
        scheduler.add(r)
    assert names(scheduler.schedule()) == ["i1"]  # i3 would fit, but i2 is ahead of it
    assert names(scheduler.schedule()) == ["i2", "i3"]


def test_an_empty_batch_takes_a_request_larger_than_the_batch():
    scheduler = ClassificationScheduler(max_rows=4)
    scheduler.add(request("big", rows=9))
    scheduler.add(request("small", rows=1))
    assert names(scheduler.schedule()) == ["big"]  # the runner cuts it in chunks
    assert scheduler.full() is False
    assert names(scheduler.schedule()) == ["small"]


def test_an_aborted_classification_request_leaves_the_queue():
    scheduler = ClassificationScheduler(max_rows=4)
    scheduler.add(request("gone"))
    scheduler.add(request("stays"))
    assert scheduler.abort("gone").request_id == "gone"
    assert scheduler.abort("gone") is None  # idempotent
    assert names(scheduler.schedule()) == ["stays"]


# ---------------------------------------------------------------------- generation
def test_waiting_requests_join_while_rows_are_free_and_running_ones_stay():
    scheduler = GenerationScheduler(max_running=3, max_prefill_tokens=1000)
    for name in ("a", "b"):
        scheduler.add(request(name))
    assert names(scheduler.schedule().admitted) == ["a", "b"]

    for name in ("c", "d"):
        scheduler.add(request(name))
    plan = scheduler.schedule()
    assert names(plan.admitted) == ["c"] and plan.preempted == []
    assert names(scheduler.running) == ["a", "b", "c"]

    scheduler.finish(scheduler.running[0])  # "a" finished: its row is free at the next step
    assert names(scheduler.schedule().admitted) == ["d"]
    assert names(scheduler.running) == ["b", "c", "d"]


def test_the_prefill_budget_bounds_one_step_but_the_first_admission_always_fits():
    scheduler = GenerationScheduler(max_running=8, max_prefill_tokens=100)
    scheduler.add(request("long", prefill=400))
    scheduler.add(request("short1", prefill=60))
    scheduler.add(request("short2", prefill=60))

    assert names(scheduler.schedule().admitted) == ["long"]  # alone over budget: admitted
    assert names(scheduler.schedule().admitted) == ["short1"]  # 60 + 60 > 100
    assert names(scheduler.schedule().admitted) == ["short2"]


def test_batch_requests_only_take_rows_interactive_ones_leave():
    scheduler = GenerationScheduler(max_running=3, max_prefill_tokens=1000)
    scheduler.add(request("b1", PRIORITY_BATCH))
    scheduler.add(request("i1"))
    scheduler.add(request("b2", PRIORITY_BATCH))
    scheduler.add(request("i2"))

    plan = scheduler.schedule()
    assert names(plan.admitted) == ["i1", "i2", "b1"]
    assert scheduler.waiting.depth(PRIORITY_BATCH) == 1


def test_an_interactive_request_preempts_the_latest_batch_row_and_waits_one_step_at_most():
    scheduler = GenerationScheduler(max_running=2, max_prefill_tokens=1000)
    scheduler.add(request("b1", PRIORITY_BATCH))
    scheduler.add(request("b2", PRIORITY_BATCH))
    scheduler.schedule()
    assert names(scheduler.running) == ["b1", "b2"]

    # When a buyer's call arrives with every row taken by batch rows
    scheduler.add(request("i1"))
    plan = scheduler.schedule()

    # Then it runs at the next step, in the row of the latest batch request, which goes
    # back to the head of the batch queue (prefilled again later, with what it made)
    assert names(plan.admitted) == ["i1"] and names(plan.preempted) == ["b2"]
    assert names(scheduler.running) == ["b1", "i1"]
    assert names(scheduler.waiting) == ["b2"]

    # and it comes back as soon as a row is free, before later batch requests
    scheduler.add(request("b3", PRIORITY_BATCH))
    scheduler.finish(scheduler.running[0])
    assert names(scheduler.schedule().admitted) == ["b2"]


def test_interactive_requests_never_preempt_each_other_and_batch_rows_never_preempt():
    scheduler = GenerationScheduler(max_running=1, max_prefill_tokens=1000)
    scheduler.add(request("i1"))
    scheduler.schedule()
    scheduler.add(request("i2"))
    scheduler.add(request("b1", PRIORITY_BATCH))
    plan = scheduler.schedule()
    assert plan.admitted == [] and plan.preempted == []
    assert names(scheduler.running) == ["i1"]


def test_a_waiting_interactive_request_holds_back_batch_admissions():
    # The budget stops i2; b1 would fit in what is left but must not go ahead of it.
    scheduler = GenerationScheduler(max_running=8, max_prefill_tokens=100)
    scheduler.add(request("i1", prefill=50))
    scheduler.add(request("i2", prefill=80))
    scheduler.add(request("b1", PRIORITY_BATCH, prefill=10))
    assert names(scheduler.schedule().admitted) == ["i1"]
    assert names(scheduler.schedule().admitted) == ["i2", "b1"]


def test_budgets_hold_over_a_long_random_run():
    import random

    rng = random.Random(7)
    scheduler = GenerationScheduler(max_running=4, max_prefill_tokens=64)
    for step in range(500):
        for _ in range(rng.randint(0, 2)):
            priority = rng.choice([PRIORITY_INTERACTIVE, PRIORITY_BATCH])
            scheduler.add(request(f"r{step}-{rng.random()}", priority, prefill=rng.randint(1, 90)))
        plan = scheduler.schedule()  # asserts its own budgets
        assert len(scheduler.running) <= 4
        assert sum(r.prefill_tokens for r in plan.admitted) <= 64 or len(plan.admitted) == 1
        interactive_waiting = scheduler.waiting.depth(PRIORITY_INTERACTIVE)
        if interactive_waiting and len(plan.admitted) == 0:
            # an interactive request left waiting means every row is interactive
            assert all(r.priority == PRIORITY_INTERACTIVE for r in scheduler.running)
        for running in list(scheduler.running):
            if rng.random() < 0.3:
                scheduler.finish(running)
