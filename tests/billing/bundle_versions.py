"""Model versions whose files are real (a peft LoRA adapter built in-process, a lexical head
fitted on a handful of rows), stored content-addressed as the studio stores a fine-tune, so
that the serving engine, the export bundle and the bundle's load.py all run them."""

import hashlib
import io
import itertools
import zipfile
from pathlib import Path

from django.conf import settings

from listings import services as listing_services
from listings.models import Listing
from serving.protocol import TEXT_CLASSIFICATION
from training_worker import artifacts
from training_worker.models import BaseModel, Dataset, FineTuningJob, ModelVersion

LABELS = ["billing", "bug", "praise"]
# Training rows of the lexical head: it keeps only terms that 5 distinct rows share, so
# each label's words come back in ten rows.
LEXICAL_ROWS = [
    *((f"refund the invoice, my card was charged twice, ticket {i}", "billing") for i in range(10)),
    *((f"the app crashes with an error after the update, ticket {i}", "bug") for i in range(10)),
    *((f"thank you, lovely support team and great help, ticket {i}", "praise") for i in range(10)),
]
_seeds = itertools.count(700)


def base_source(slug: str) -> str:
    """The folder the platform loads a shipped base from (what a buyer passes as --base)."""
    from training_worker.ml.base_models import resolve_base_model_source

    return resolve_base_model_source(
        BaseModel.objects.get(slug=slug).source, settings.MODEL_CACHE_DIR
    )


def lexical_head_bytes(weight: float) -> bytes:
    """A lexical head fitted by the platform's own code on LEXICAL_ROWS, blended at
    ``weight``, as the file the studio stores."""
    import dataclasses

    from training_worker.ml import lexical_head

    ids = {label: i for i, label in enumerate(LABELS)}
    head = lexical_head.fit(
        [text for text, _ in LEXICAL_ROWS],
        [ids[label] for _, label in LEXICAL_ROWS],
        n_labels=len(LABELS),
        seed=0,
    )
    return dataclasses.replace(head, weight=weight).to_bytes()


def real_version(
    owner,
    *,
    task: str,
    folder: Path,
    lexical_weight: float | None = None,
    max_seq_length: int | None = None,
) -> ModelVersion:
    """alice's version whose adapter is a random but real LoRA adapter (classification:
    minilm-l6, mean-pooling head, LABELS; generation: tiny-causal, built first), with a
    lexical head blended at ``lexical_weight`` and a ``max_seq_length`` in its run record
    when given."""
    from serving.engine.synthetic import build_adapter
    from training_worker.ml.base_models import load_tokenizer_and_model

    seed = next(_seeds)
    slug = "minilm-l6" if task == TEXT_CLASSIFICATION else "tiny-causal"
    labels = LABELS if task == TEXT_CLASSIFICATION else []
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))} if labels else {}
    _, model = load_tokenizer_and_model(base_source(slug), None, task, **kwargs)
    built = build_adapter(model, task, folder / f"adapter-{seed}", seed=seed, labels=labels)
    stored = {
        name: artifacts.store_content_addressed(built.directory / name)
        for name in ("adapter_model.safetensors", "adapter_config.json")
    }
    lexical = {}
    if lexical_weight is not None:
        head_path = built.directory / "lexical_head.safetensors"
        head_path.write_bytes(lexical_head_bytes(lexical_weight))
        path, sha256, size = artifacts.store_content_addressed(head_path)
        lexical = {"lexical_head_path": path, "lexical_head_sha256": sha256,
                   "lexical_head_size": size}  # fmt: skip
    run_record = {"seed": seed}
    if max_seq_length is not None:
        run_record["resolved_hyperparameters"] = {"max_seq_length": max_seq_length}
    dataset = Dataset.objects.create(
        owner=owner, name=f"data {seed}", filename="d.csv", size_bytes=1, sha256=f"{seed:064d}",
        status="ready", task=task, report={"rows_total": 100, "warnings": []},
    )  # fmt: skip
    job = FineTuningJob.objects.create(
        owner=owner, base_model=BaseModel.objects.get(slug=slug), dataset=dataset, task=task,
        seed=seed, status="succeeded",
    )  # fmt: skip
    (adapter_path, adapter_sha, adapter_size) = stored["adapter_model.safetensors"]
    (config_path, config_sha, config_size) = stored["adapter_config.json"]
    return ModelVersion.objects.create(
        owner=owner, job=job, base_model=job.base_model, name=f"{slug}:bundle:{seed}", task=task,
        labels=labels, adapter_path=adapter_path, adapter_sha256=adapter_sha,
        adapter_size=adapter_size, config_path=config_path, config_sha256=config_sha,
        config_size=config_size, dataset_sha256=dataset.sha256, run_record=run_record,
        evaluation={"task": task, "sealed_rows": 50, "metrics": {}},
        card="---\nlibrary_name: peft\n---\n", **lexical,
    )  # fmt: skip


def published(owner, moderator, version: ModelVersion, title: str) -> Listing:
    listing = listing_services.listing_create(
        owner=owner, model_version_id=version.id, title=title,
        summary="A specialist with a real adapter.", domain="other", commercial_use=True,
        on_prem_download=True,
    )  # fmt: skip
    listing_services.listing_submit(owner=owner, listing_id=listing.id)
    return listing_services.listing_approve(moderator=moderator, listing_id=listing.id)


def exported(client, version: ModelVersion, folder: Path) -> Path:
    """GET the version's export bundle with `client` and unpack it into `folder`."""
    response = client.get(f"/api/v1/models/{version.id}/export")
    assert response.status_code == 200, response.content[:300]
    content = b"".join(response.streaming_content)
    manifest_sha256 = response["X-Niche-Manifest-SHA256"]
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        archive.extractall(folder)
    assert hashlib.sha256((folder / "MANIFEST.json").read_bytes()).hexdigest() == manifest_sha256
    return folder
