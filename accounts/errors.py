"""Error codes of the accounts context."""

from marketplace.errors import (
    ApplicationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
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
