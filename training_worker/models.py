"""The studio: base models, datasets, fine-tuning jobs and the model versions they write.

Every status field changes only through training_worker.services, one function per
transition, each checking the current state.
"""

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.utils import timezone


class TaskType(models.TextChoices):
    TEXT_CLASSIFICATION = "text-classification", "Text classification"
    TEXT_GENERATION = "text-generation", "Text generation"


class BaseModel(models.Model):
    """An open model experts fine-tune; managed by operators in the admin."""

    slug = models.SlugField(unique=True)
    display_name = models.CharField(max_length=120)
    source = models.CharField(
        max_length=300,
        help_text=(
            "A Hugging Face repo id, a local path, 'package:<python package>' or "
            "'cache:<name>' (a folder under MODEL_CACHE_DIR)."
        ),
    )
    revision = models.CharField(
        max_length=100, blank=True, help_text="Pinned revision (commit) for Hub repo ids."
    )
    architecture = models.CharField(max_length=40, help_text="e.g. bert, llama, qwen2")
    tasks = models.JSONField(default=list, help_text="Supported task types.")
    licence = models.CharField(max_length=60)
    parameter_count = models.BigIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class DatasetStatus(models.TextChoices):
    UPLOADED = "uploaded"
    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


class Dataset(models.Model):
    """An expert's upload. Its sealed split is drawn by the platform and never served."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets"
    )
    name = models.CharField(max_length=200)
    filename = models.CharField(max_length=255)
    task = models.CharField(max_length=40, choices=TaskType.choices, blank=True)
    format = models.CharField(max_length=10, blank=True)
    status = models.CharField(
        max_length=20, choices=DatasetStatus.choices, default=DatasetStatus.UPLOADED
    )
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    source_path = models.CharField(max_length=300, blank=True)
    train_path = models.CharField(max_length=300, blank=True)
    sealed_path = models.CharField(max_length=300, blank=True)
    report = models.JSONField(default=dict, blank=True)
    rows_usable = models.IntegerField(default=0)
    train_rows = models.IntegerField(default=0)
    sealed_rows = models.IntegerField(default=0)
    labels = models.JSONField(default=list, blank=True)
    split_seed = models.BigIntegerField(null=True, blank=True)
    split_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    # When the validation task was last sent, and how often the sweep had to send it
    # again (lost message, dead worker); past STUDIO_MAX_REQUEUES it is given up.
    enqueued_at = models.DateTimeField(default=timezone.now)
    requeues = models.IntegerField(default=0)
    validated_at = models.DateTimeField(null=True, blank=True)
    # Set when the owner deletes a dataset that a job used: files go, the record stays.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The data family whose sealed split this dataset shares (set when it is ready).
    family = models.ForeignKey(
        "DataFamily", null=True, blank=True, on_delete=models.SET_NULL, related_name="datasets"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class DataFamily(models.Model):
    """Near-duplicate datasets of one owner and task, sharing one sealed split
    (training_worker/ml/data_families.py). Founded by its first dataset and never deleted
    with it, so deleting and uploading again does not draw a new split or reset the count
    of sealed evaluations on the data. The keys are keyed digests of the near-duplicate
    keys of the inputs, never the text; they are not shown anywhere."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="data_families"
    )
    task = models.CharField(max_length=40, choices=TaskType.choices)
    root_dataset = models.ForeignKey(
        "Dataset", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The dataset that founded the family (null once its row is deleted).",
    )  # fmt: skip
    # ml.data_families.pack_digests: every distinct input of the first dataset, and the
    # sealed ones among them.
    input_keys = models.BinaryField()
    sealed_keys = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "data families"

    def __str__(self) -> str:
        return f"data family {str(self.id)[:8]} ({self.task})"


class JobStatus(models.TextChoices):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class FineTuningJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fine_tuning_jobs"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    task = models.CharField(max_length=40, choices=TaskType.choices)
    status = models.CharField(
        max_length=20, choices=JobStatus.choices, default=JobStatus.VALIDATING_FILES
    )
    hyperparameters = models.JSONField(default=dict, blank=True, help_text="As requested.")
    resolved_hyperparameters = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField()
    suffix = models.CharField(max_length=40, blank=True)
    # Progress, written by the worker at most about once a second.
    step = models.IntegerField(default=0)
    total_steps = models.IntegerField(default=0)
    epoch = models.FloatField(default=0)
    loss = models.FloatField(null=True, blank=True)
    examples_per_s = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    trained_tokens = models.BigIntegerField(default=0)
    error_code = models.CharField(max_length=60, blank=True)
    error_message = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    # The attempt number is the fencing token: each claim increments it, and every write
    # of a run is conditional on (id, attempts, running), so a presumed-dead worker that
    # comes back changes nothing once its replacement has claimed the job.
    attempts = models.IntegerField(default=0)
    # When the training task was last sent, and how often the sweep had to send it again.
    enqueued_at = models.DateTimeField(default=timezone.now)
    requeues = models.IntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    fine_tuned_model = models.OneToOneField(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"job {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


class EventLevel(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventType(models.TextChoices):
    MESSAGE = "message"
    METRICS = "metrics"


class JobEvent(models.Model):
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=10, choices=EventLevel.choices, default="info")
    type = models.CharField(max_length=10, choices=EventType.choices, default="message")
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:60]}"


class Checkpoint(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    epoch = models.FloatField()
    metrics = models.JSONField(default=dict)
    adapter_path = models.CharField(max_length=300)
    adapter_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["step"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="one_checkpoint_per_step")
        ]

    def __str__(self) -> str:
        return f"checkpoint step {self.step} of job {self.job_id}"


@dataclass(frozen=True)
class StoredFile:
    """One file a version is made of: its name (in the API and the export bundle), its
    storage name, and the SHA-256 and size recorded when it was written."""

    name: str
    storage_name: str
    sha256: str
    size: int

    @property
    def is_weights(self) -> bool:
        return self.name.endswith(".safetensors")


class ModelVersion(models.Model):
    """Immutable once written: adapter files, hashes, run record, evaluation, card."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_versions"
    )
    job = models.OneToOneField(
        FineTuningJob, on_delete=models.PROTECT, related_name="model_version"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="versions")
    name = models.CharField(max_length=200)
    task = models.CharField(max_length=40, choices=TaskType.choices)
    labels = models.JSONField(default=list, blank=True)
    adapter_path = models.CharField(max_length=300)
    adapter_sha256 = models.CharField(max_length=64, db_index=True)
    adapter_size = models.BigIntegerField()
    config_path = models.CharField(max_length=300)
    config_sha256 = models.CharField(max_length=64)
    config_size = models.BigIntegerField()
    # Classification: the lexical head served blended with the adapter
    # (training_worker/ml/lexical_head.py); blank when the adapter alone is served.
    lexical_head_path = models.CharField(max_length=300, blank=True, default="")
    lexical_head_sha256 = models.CharField(max_length=64, blank=True, default="")
    lexical_head_size = models.BigIntegerField(default=0)
    dataset_sha256 = models.CharField(max_length=64)
    run_record = models.JSONField()
    evaluation = models.JSONField()
    router_signals = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the specialist router reads (training rows only): prototypes and "
        "calibration; {} for versions trained before routing.",
    )
    card = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def stored_files(self) -> tuple[StoredFile, ...]:
        """The version's files, adapter first; the lexical head only when it has one. The
        API, the portal and the export bundle list these and nothing else."""
        files = [
            StoredFile(
                "adapter_model.safetensors", self.adapter_path, self.adapter_sha256,
                self.adapter_size,
            ),
            StoredFile(
                "adapter_config.json", self.config_path, self.config_sha256, self.config_size
            ),
        ]  # fmt: skip
        if self.lexical_head_path:
            files.append(
                StoredFile(
                    "lexical_head.safetensors", self.lexical_head_path,
                    self.lexical_head_sha256, self.lexical_head_size,
                )
            )  # fmt: skip
        return tuple(files)
