"""A training worker SIGKILLed at seeded points of a job: during data loading, mid-epoch,
half-way through a checkpoint file, during evaluation, half-way through the final
version's files. After the sweep and a rescuer, the job ends `succeeded` (or `failed` with
a reason), nothing stays `running`, the job has one version whose stored bytes match its
SHA-256, and no file the dead attempt wrote is left behind (storage or scratch space).

Where the worker is comes from the database (events, progress, checkpoint rows) and, for
the two file writes, from the paced storage of crash_settings.py, which announces a write
and pauses half-way through it. `make test` runs CRASH_POINTS_FAST; `make reliability`
runs CRASH_POINTS=all. CRASH_SEED (default 12) seeds the order and the jitter.
"""

import os
import random
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import User
from tests.integration.conftest import WorkerProcess
from tests.integration.test_training_on_workers import job_state, start_job, wait_for
from training_worker import artifacts, services
from training_worker.ml.recipe import RESOLVED_CONFIGURATION_EVENT
from training_worker.models import Checkpoint, FineTuningJob, JobEvent, JobStatus, ModelVersion

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POINTS = ("data_loading", "mid_epoch", "checkpoint_write", "evaluation", "version_write")
CRASH_POINTS_FAST = ("checkpoint_write",)
SEED = int(os.environ.get("CRASH_SEED", "12"))
PACE_SECONDS = 1.5  # how long the paced storage holds a write half-way


def selected_points() -> list[str]:
    chosen = os.environ.get("CRASH_POINTS", "")
    if chosen == "all":
        points = list(POINTS)
    elif chosen:
        points = [p for p in chosen.split(",") if p]
        unknown = set(points) - set(POINTS)
        assert not unknown, f"unknown CRASH_POINTS {unknown}; known: {POINTS}"
    else:
        points = list(CRASH_POINTS_FAST)
    random.Random(SEED).shuffle(points)
    return points


@pytest.fixture
def crash_env(worker_env, tmp_path, settings):
    media = tmp_path / "media"
    media.mkdir()
    settings.MEDIA_ROOT = media  # this process (uploads) and the workers share it
    saves = tmp_path / "saves.log"
    saves.touch()
    env = worker_env | {
        "DJANGO_SETTINGS_MODULE": "tests.integration.crash_settings",
        "CRASH_MEDIA_ROOT": str(media),
        "CRASH_SAVES_LOG": str(saves),
    }
    started: list[WorkerProcess] = []

    def spawn(queues: str, **extra: str) -> WorkerProcess:
        worker = WorkerProcess(env | extra, queues, f"crash-{uuid.uuid4().hex[:6]}")
        started.append(worker)
        return worker

    yield spawn, media, saves
    for worker in started:
        worker.stop()


def events(job) -> list[str]:
    return list(JobEvent.objects.filter(job=job).values_list("message", flat=True))


def saved(saves: Path, prefix: str) -> bool:
    return any(line.startswith(prefix) for line in saves.read_text().splitlines())


def poll(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def reach(point: str, job, saves: Path, rng: random.Random) -> None:
    """Return once the worker is at `point` (plus a seeded jitter inside it)."""
    if point == "data_loading":
        poll(lambda: any(m.startswith("Started on") for m in events(job)), 120, "the claim")
        time.sleep(rng.uniform(0, 0.05))
    elif point == "mid_epoch":
        total = poll(lambda: job_state(job).total_steps, 180, "the first progress")
        target = rng.randint(1, max(1, total // 4))  # the first half of the first epoch
        poll(lambda: job_state(job).step >= target, 180, f"step {target}")
    elif point == "checkpoint_write":
        poll(lambda: saved(saves, f"checkpoints/{job.pk}/"), 180, "a checkpoint write")
        time.sleep(rng.uniform(0, PACE_SECONDS / 3))
    elif point == "evaluation":
        poll(lambda: "Training loop finished." in events(job), 240, "the end of training")
    elif point == "version_write":
        poll(lambda: saved(saves, "artifacts/sha256/"), 240, "the version's files")
        time.sleep(rng.uniform(0, PACE_SECONDS / 3))


def assert_landed(point: str, job, saves: Path) -> None:
    """The kill hit the phase it aimed at (read back from what the run had written)."""
    written = events(job)
    if point == "data_loading":
        assert RESOLVED_CONFIGURATION_EVENT not in written, written
    elif point == "mid_epoch":
        assert job_state(job).step > 0 and not saved(saves, f"checkpoints/{job.pk}/")
    elif point == "checkpoint_write":
        assert not Checkpoint.objects.filter(job=job).exists()
    elif point == "evaluation":
        assert "Training loop finished." in written
        assert "Adapter saved." not in written, written
    elif point == "version_write":
        assert not ModelVersion.objects.filter(job=job).exists()


def files_under(root: Path, prefix: str) -> set[str]:
    base = root / prefix
    return {str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()}


@pytest.mark.timeout(600)  # two trainings on two cores shared with the rest of the suite
@pytest.mark.parametrize("point", selected_points())
def test_a_training_worker_killed_at_a_seeded_point_leaves_one_clean_outcome(
    point, crash_env, shipped_base_models
):
    spawn, media, saves = crash_env
    rng = random.Random(f"{SEED}:{point}")
    owner = User.objects.create_user(email="alice@example.com", password="x" * 12)
    doomed = spawn("training", CRASH_PACE_SECONDS=str(PACE_SECONDS))
    validator = spawn("default")
    doomed.wait_ready()
    validator.wait_ready()
    # Progress is written once a second: mid-epoch needs an epoch of several seconds even
    # on an idle machine, where 30 rows a label train an epoch in about one.
    job = start_job(owner, rows_per_label=150 if point == "mid_epoch" else 30, epochs=2)

    # When the worker is SIGKILLed (its whole process group) at the point
    reach(point, job, saves, rng)
    doomed.kill()
    assert_landed(point, job, saves)
    assert job_state(job).status == JobStatus.RUNNING  # nobody told the database

    # Then the sweep (stale after 0 s) requeues it once and a rescuer finishes it
    assert services.jobs_sweep_stale(stale_after=timedelta(seconds=0)) == {
        "requeued": 1,
        "failed": 0,
    }
    rescuer = spawn("training")
    rescuer.wait_ready()
    done = wait_for(lambda: job_state(job).is_terminal and job_state(job), 300, "the retry")
    assert done.status == JobStatus.SUCCEEDED, (done.error_code, done.error_message)
    assert done.attempts == 2
    assert not FineTuningJob.objects.filter(status=JobStatus.RUNNING).exists()

    # one version, whose stored files are whole (bytes match the recorded SHA-256)
    (version,) = ModelVersion.objects.filter(job=job)
    assert done.fine_tuned_model_id == version.pk
    stored = [
        (version.adapter_path, version.adapter_sha256),
        (version.config_path, version.config_sha256),
    ]
    if version.lexical_head_path:  # the blend's head, when the version has one
        stored.append((version.lexical_head_path, version.lexical_head_sha256))
    for name, sha in stored:
        assert artifacts.sha256_of_path(media / name) == sha, name
    # one checkpoint row per epoch, each pointing at whole files of the finishing attempt
    checkpoints = list(Checkpoint.objects.filter(job=job))
    assert [c.epoch for c in checkpoints] == [1, 2]
    for checkpoint in checkpoints:
        assert f"/attempt-{done.attempts}/" in checkpoint.adapter_path
        assert artifacts.sha256_of_path(media / checkpoint.adapter_path) == (
            checkpoint.adapter_sha256
        )

    # and nothing the dead attempt wrote is left: no stray artifact, checkpoint or scratch
    kept_checkpoints = {c.adapter_path for c in checkpoints} | {
        c.adapter_path.replace("adapter_model.safetensors", "adapter_config.json")
        for c in checkpoints
    }
    assert files_under(media, f"checkpoints/{job.pk}") == kept_checkpoints
    assert files_under(media, "artifacts") == {name for name, _sha in stored}
    assert not (Path(settings.NICHE_WORK_DIR) / "jobs" / str(job.pk)).exists()
