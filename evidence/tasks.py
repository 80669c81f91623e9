"""Celery adapters of evidence (routed by module: `evidence.tasks.*` to the inference
queue, where this process's engine runs the rows; the sweep is named to the default one)."""

from celery import shared_task


@shared_task(acks_late=True)
def run_private_evaluation(evaluation_id: str) -> str:
    from evidence.services import private_evaluation_run

    return private_evaluation_run(evaluation_id=evaluation_id)


@shared_task(name="evidence.sweep_private_evaluations")
def sweep_private_evaluations() -> dict:
    from evidence.services import private_evaluations_sweep

    return private_evaluations_sweep()


@shared_task(name="evidence.tasks.leaderboard_score", ignore_result=True)
def leaderboard_score(benchmark_id: str, listing_id: str, version_id: str) -> str:
    """A listing's live version on a benchmark set, at batch priority (inference queue)."""
    from evidence.leaderboards import leaderboard_score as score

    return score(benchmark_id=int(benchmark_id), listing_id=listing_id, version_id=version_id)


@shared_task(name="evidence.leaderboards_sweep", ignore_result=True)
def leaderboards_sweep() -> int:
    """Beat (default queue): queue every live version not scored yet on a set it fits."""
    from evidence.leaderboards import leaderboards_sweep as sweep

    return sweep()
