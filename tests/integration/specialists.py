"""Published listings whose versions are real LoRA adapters in storage, so a real
inference worker can load and run them: built in-process with peft (random weights, a
few seconds on CPU), stored content-addressed like the studio stores a fine-tune."""

import itertools
import uuid
from pathlib import Path

from django.conf import settings

from listings import services as listing_services
from listings.models import Listing
from serving.protocol import TEXT_CLASSIFICATION
from tests.integration.conftest import INFERENCE_POOL_ARGS, WorkerProcess
from training_worker import artifacts
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

LABELS = ["billing", "bug", "praise"]
_seeds = itertools.count(300)


def _base_source(slug: str) -> str:
    from training_worker.ml.base_models import resolve_base_model_source

    base = BaseModel.objects.get(slug=slug)
    return resolve_base_model_source(base.source, settings.MODEL_CACHE_DIR)


def real_version(owner, *, task: str, folder: Path) -> ModelVersion:
    """A ModelVersion of alice's whose adapter files are a real peft adapter in storage
    (classification: minilm-l6 with LABELS; generation: tiny-causal, built first)."""
    from serving.engine.synthetic import build_adapter
    from training_worker.ml.base_models import load_tokenizer_and_model

    seed = next(_seeds)
    slug = "minilm-l6" if task == TEXT_CLASSIFICATION else "tiny-causal"
    labels = LABELS if task == TEXT_CLASSIFICATION else []
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))} if labels else {}
    _, model = load_tokenizer_and_model(_base_source(slug), None, task, **kwargs)
    built = build_adapter(model, task, folder / f"adapter-{seed}", seed=seed, labels=labels)
    adapter_path, adapter_sha, adapter_size = artifacts.store_content_addressed(
        built.directory / "adapter_model.safetensors"
    )
    config_path, config_sha, config_size = artifacts.store_content_addressed(
        built.directory / "adapter_config.json"
    )
    dataset = Dataset.objects.create(
        owner=owner, name=f"data {seed}", filename="d.csv", size_bytes=1, sha256=f"{seed:064d}",
        status="ready", task=task, report={"rows_total": 100, "warnings": []},
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug=slug), dataset=dataset, task=task,
        seed=seed, status="succeeded",
    )  # fmt: skip
    evaluation = (
        {"task": task, "sealed_rows": 50, "metrics": {"accuracy": 0.9}, "baselines": {}}
        if task == TEXT_CLASSIFICATION
        else {"task": task, "sealed_rows": 50, "metrics": {"token_f1": 0.4, "base_token_f1": 0.1}}
    )
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name=f"{slug}:ft:{seed}", task=task,
        labels=labels, adapter_path=adapter_path, adapter_sha256=adapter_sha,
        adapter_size=adapter_size, config_path=config_path, config_sha256=config_sha,
        config_size=config_size, dataset_sha256=dataset.sha256, run_record={},
        evaluation=evaluation, card="---\nlibrary_name: peft\n---\n",
    )  # fmt: skip


def publish_specialist(
    owner, moderator, *, task: str = TEXT_CLASSIFICATION, folder: Path, title: str = ""
) -> Listing:
    """alice's published listing whose live version is a real adapter."""
    version = real_version(owner, task=task, folder=folder)
    title = title or ("Support ticket triage" if task == TEXT_CLASSIFICATION else "Replies")
    listing = listing_services.listing_create(
        owner=owner, model_version_id=version.id, title=title,
        summary="A specialist with a real adapter.", domain="other", commercial_use=True,
    )  # fmt: skip
    listing_services.listing_submit(owner=owner, listing_id=listing.id)
    return listing_services.listing_approve(moderator=moderator, listing_id=listing.id)


class InferenceWorker(WorkerProcess):
    """An inference worker as `make run` starts it (threads pool, one batcher), in a
    process group of its own on the test database; `env` adds settings such as
    SERVING_BATCH_MAX_WAIT_MS."""

    def __init__(self, worker_env: dict, **env: str):
        name = f"inf-{uuid.uuid4().hex[:6]}"
        super().__init__(worker_env | env, "inference", name, INFERENCE_POOL_ARGS)

    def wait_ready(self, timeout: float = 120) -> "InferenceWorker":
        super().wait_ready(timeout)
        return self

    def received(self) -> int:
        """How many inference tasks this worker has taken off the queue so far."""
        lines = self.log_path.read_text().splitlines()
        return sum("serving: request " in line and " received" in line for line in lines)
