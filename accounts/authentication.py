"""API-key authentication for machines: `Authorization: Bearer nk_...`."""

from rest_framework import authentication, exceptions

from accounts.models import ApiKey
from accounts.selectors import api_key_resolve
from accounts.services import api_key_mark_used


def calling_api_key(request) -> ApiKey | None:
    """The API key this request authenticated with; None for a session or no caller."""
    return request.auth if isinstance(request.auth, ApiKey) else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0] != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "The Authorization header must be 'Bearer <key>'."
            )
        key = api_key_resolve(plaintext=parts[1])
        if key is None:
            raise exceptions.AuthenticationFailed("The API key is invalid or has been revoked.")
        api_key_mark_used(key=key)
        return key.user, key

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) when no credentials were sent.
        return self.keyword
