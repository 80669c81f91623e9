"""Error codes of serving: refusals before the engine, and the engine's failures."""

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


class EngineTimeout(ApplicationError):
    """The engine did not answer within SERVING_TIMEOUT_SECONDS (504)."""

    status = 504
    default_code = "engine_timeout"


class EngineFailed(ApplicationError):
    """The engine answered with an error (its code is kept: adapter_integrity, ...)."""

    status = 502
    default_code = "engine_error"
