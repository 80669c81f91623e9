"""Error codes of the studio."""

from marketplace.errors import ConflictError, InvalidInputError, NotFoundError


class DatasetNotFound(NotFoundError):
    default_code = "dataset_not_found"


class JobNotFound(NotFoundError):
    default_code = "job_not_found"


class ModelVersionNotFound(NotFoundError):
    default_code = "model_not_found"


class DatasetInUse(ConflictError):
    default_code = "dataset_in_use"


class DatasetNotUsable(InvalidInputError):
    default_code = "dataset_not_usable"


class UnknownBaseModel(InvalidInputError):
    default_code = "unknown_base_model"


class TaskNotSupported(InvalidInputError):
    default_code = "task_not_supported"


class InvalidHyperparameters(InvalidInputError):
    default_code = "invalid_hyperparameters"


class JobNotCancellable(ConflictError):
    default_code = "job_not_cancellable"
