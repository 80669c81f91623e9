"""Error codes of serving: refusals before the engine, and the engine's failures."""

import math

from marketplace.errors import ApplicationError, InvalidInputError, RateLimitedError


class InvalidInferenceInput(InvalidInputError):
    """Too many inputs, too long, or the wrong shape for the listing's task (422)."""

    default_code = "invalid_input"


class RateLimited(RateLimitedError):
    """More calls this minute than SERVING_RATE_LIMIT_PER_MINUTE (429 with Retry-After)."""

    default_code = "rate_limited"


class EngineUnavailable(ApplicationError):
    """No broker, or no worker consumes the inference queue (503)."""

    status = 503
    default_code = "engine_unavailable"


class GardenEmpty(ApplicationError):
    """None of a garden's members may answer now (all left: suspended, delisted or no
    longer composable), so the garden cannot serve (503 until its curator adds one)."""

    status = 503
    default_code = "garden_empty"


class EngineOverloaded(ApplicationError):
    """The engine's queue for this task is full (503 with Retry-After: the queue's depth
    over its recent drain rate, whole seconds, at least 1)."""

    status = 503
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = max(1, math.ceil(retry_after or 1))


class EngineTimeout(ApplicationError):
    """The engine did not answer within SERVING_TIMEOUT_SECONDS (504)."""

    status = 504
    default_code = "engine_timeout"


class EngineFailed(ApplicationError):
    """The engine answered with an error (its code is kept: adapter_integrity, ...)."""

    status = 502
    default_code = "engine_error"


# --- batch inference (serving.batches) -----------------------------------------------


class BatchFileInvalid(InvalidInputError):
    """An upload that is not a JSONL of batch requests (422; `fields` name each bad line)."""

    default_code = "invalid_batch_file"


class BatchFileNotFound(ApplicationError):
    """No such file among the caller's (404: another user's is not revealed)."""

    status = 404
    default_code = "file_not_found"


class BatchNotFound(ApplicationError):
    status = 404
    default_code = "batch_not_found"


class BatchNotCancellable(ApplicationError):
    """The batch already ended or is writing its output (409)."""

    status = 409
    default_code = "batch_not_cancellable"
