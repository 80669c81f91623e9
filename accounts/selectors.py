"""Reads of the accounts context."""

import hmac

from django.db.models import QuerySet

from accounts.models import ApiKey, User
from accounts.services import API_KEY_PREFIX, api_key_prefix_of, hash_api_key


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user)


def api_key_resolve(*, plaintext: str) -> ApiKey | None:
    """The live key this plaintext belongs to, or None (unknown, revoked, user suspended).

    The stored hash is compared in constant time.
    """
    if not plaintext.startswith(API_KEY_PREFIX):
        return None
    key = ApiKey.objects.select_related("user").filter(prefix=api_key_prefix_of(plaintext)).first()
    if key is None or not hmac.compare_digest(key.key_hash, hash_api_key(plaintext)):
        return None
    if key.revoked_at is not None or not key.user.is_active:
        return None
    return key
