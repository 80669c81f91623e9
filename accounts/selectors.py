"""Reads of the accounts context."""

import hmac

from django.db.models import QuerySet

from accounts import email_verification
from accounts.errors import InvalidVerificationLink
from accounts.models import ApiKey, User
from accounts.services import API_KEY_PREFIX, api_key_prefix_of, hash_api_key


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user)


def api_key_live_count(*, user: User) -> int:
    """Keys not revoked: what API_KEYS_MAX_PER_USER bounds."""
    return ApiKey.objects.filter(user=user, revoked_at__isnull=True).count()


def email_verification_link_user(*, token: str) -> User:
    """The user an emailed link verifies, changing nothing (the page before the button).
    Raises what email_verification_confirm raises for a link that cannot verify."""
    claim = email_verification.read_token(token)
    user = User.objects.filter(pk=claim.user_id, is_active=True).first()
    if user is None or user.email != claim.email:
        raise InvalidVerificationLink(
            "This verification link is not valid any more; use the latest link we sent you.",
            fields={"token": ["Not a valid verification link."]},
        )
    return user


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
