"""Error codes of the accounts context."""

from marketplace.errors import ApplicationError, InvalidInputError, NotFoundError


class ApiKeyNotFound(NotFoundError):
    default_code = "api_key_not_found"


class InvalidScopes(InvalidInputError):
    default_code = "invalid_scopes"


class EmailTaken(ApplicationError):
    status = 409
    default_code = "email_taken"
