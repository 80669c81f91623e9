"""Error codes of the accounts context."""

from marketplace.errors import (
    ApplicationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)


class ApiKeyNotFound(NotFoundError):
    default_code = "api_key_not_found"


class InvalidScopes(InvalidInputError):
    default_code = "invalid_scopes"


class EmailTaken(ApplicationError):
    status = 409
    default_code = "email_taken"


class ApiKeyScopeExceedsCaller(PermissionDeniedError):
    """A key tried to mint or revoke a key with a scope it does not hold itself."""

    default_code = "scope_exceeds_caller"


class ApiKeyLimitReached(ConflictError):
    """The user already holds API_KEYS_MAX_PER_USER live keys."""

    default_code = "api_key_limit_reached"


class InvalidKeyRateLimit(InvalidInputError):
    """A key's own rate limit must lie between 1 and its user's."""

    default_code = "invalid_rate_limit"


class EmailNotVerified(PermissionDeniedError):
    """API keys and free trials wait until the user proved their address."""

    default_code = "email_not_verified"


class EmailAlreadyVerified(ConflictError):
    default_code = "email_already_verified"


class InvalidVerificationLink(InvalidInputError):
    default_code = "invalid_verification_link"


class VerificationLinkExpired(InvalidInputError):
    default_code = "verification_link_expired"


class SignUpRateLimited(RateLimitedError):
    """SIGNUP_MAX_PER_ADDRESS_PER_HOUR or SIGNUP_MAX_PER_HOUR reached."""

    default_code = "sign_up_rate_limited"


class VerificationEmailRateLimited(RateLimitedError):
    """One link per EMAIL_VERIFICATION_RESEND_SECONDS, EMAIL_VERIFICATION_MAX_PER_DAY a day."""

    default_code = "verification_email_rate_limited"


class AccountServiceUnavailable(ApplicationError):
    """The throttles' store (Redis) or the mail server cannot be reached: try again."""

    status = 503
    default_code = "service_unavailable"
