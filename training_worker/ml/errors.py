"""Typed training failures; each carries a stable snake_case ``code`` stored on the job row."""


class TrainingError(Exception):
    """Base of every failure the recipe reports to the job; ``code`` is stable and snake_case."""

    code: str = "training_failed"

    def __init__(self, code: str | None = None, message: str = "") -> None:
        self.code = code or type(self).code
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TrainingCancelled(TrainingError):
    """The job's owner asked to stop; raised between steps, never mid-step."""

    code = "cancelled"

    def __init__(self, message: str = "Training was cancelled.") -> None:
        super().__init__(self.code, message)


class InvalidTrainingData(TrainingError):
    """The rows cannot be trained on (empty, wrong shape, unknown label)."""

    code = "invalid_data"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class BaseModelUnavailable(TrainingError):
    """The base model's files cannot be found or read."""

    code = "base_model_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class TrainingOutOfMemory(TrainingError):
    """The device ran out of memory; a smaller batch or max_seq_length may fit."""

    code = "out_of_memory"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class UnsafeAdapterWritten(TrainingError):
    """The adapter file training just wrote fails the same safetensors checks that serving
    and buyers' downloads apply, so it is never stored as a checkpoint or a version."""

    code = "unsafe_adapter"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)
