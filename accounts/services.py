"""Writes of the accounts context."""

import hashlib
import secrets
import string

from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.utils import timezone

from accounts.errors import ApiKeyNotFound, ApiKeyScopeExceedsCaller, EmailTaken, InvalidScopes
from accounts.models import ApiKey, ApiKeyScope, ExpertProfile, User

API_KEY_PREFIX = "nk_"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX_RANDOM_CHARS = 8
LAST_USED_RESOLUTION_SECONDS = 60


def hash_api_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def api_key_prefix_of(plaintext: str) -> str:
    """The public, indexed part of a key: `nk_` and eight random characters."""
    return plaintext[: len(API_KEY_PREFIX) + _PREFIX_RANDOM_CHARS]


def user_sign_up(
    *, email: str, password: str, display_name: str = "", is_expert: bool = False
) -> User:
    """Create a user (buyer always, expert if asked) and, for experts, an empty profile.

    Raises EmailTaken (409) if the address already has an account.
    """
    email = email.strip().lower()
    try:
        with transaction.atomic():
            user = User.objects.create_user(
                email=email, password=password, display_name=display_name, is_expert=is_expert
            )
            if is_expert:
                ExpertProfile.objects.create(user=user)
    except IntegrityError:
        raise EmailTaken(
            "An account with this email already exists.", fields={"email": []}
        ) from None
    return user


def _clean_scopes(scopes: list[str]) -> list[str]:
    allowed = set(ApiKeyScope.values)
    unknown = sorted(set(scopes) - allowed)
    if unknown or not scopes:
        raise InvalidScopes(
            f"Scopes must be a non-empty subset of {', '.join(sorted(allowed))}.",
            fields={"scopes": [f"Unknown scope: {s}" for s in unknown] or ["Required."]},
        )
    return sorted(set(scopes))


def _require_within_caller(*, caller: ApiKey | None, scopes: list[str], action: str) -> None:
    """A key may only act on keys no wider than itself; a session (caller None) on any."""
    if caller is None:
        return
    missing = sorted(set(scopes) - set(caller.scopes))
    if missing:
        raise ApiKeyScopeExceedsCaller(
            f"This API key cannot {action} a key with scopes it does not hold itself.",
            fields={"scopes": [f"Not held by this key: {', '.join(missing)}"]},
        )


def api_key_create(
    *, user: User, name: str, scopes: list[str], minted_by: ApiKey | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again.

    `minted_by` is the API key making the call (None for a session or the console);
    raises ApiKeyScopeExceedsCaller (403) if the new key would be wider than it.
    """
    scopes = _clean_scopes(scopes)
    _require_within_caller(caller=minted_by, scopes=scopes, action="mint")
    for _ in range(5):
        prefix = API_KEY_PREFIX + "".join(
            secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_RANDOM_CHARS)
        )
        plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    user=user,
                    name=name.strip() or "API key",
                    prefix=prefix,
                    key_hash=hash_api_key(plaintext),
                    scopes=scopes,
                )
            return key, plaintext
        except IntegrityError:
            continue  # prefix collision: astronomically rare, draw again
    raise RuntimeError("could not draw a unique API key prefix")


def api_key_revoke(*, user: User, key_id, revoked_by: ApiKey | None = None) -> ApiKey:
    """Revoke one of the user's keys. Idempotent; another user's key is 404.

    `revoked_by` is the API key making the call (None for a session); raises
    ApiKeyScopeExceedsCaller (403) if the target holds a scope the caller lacks.
    """
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise ApiKeyNotFound("No API key with this id.")
    _require_within_caller(caller=revoked_by, scopes=key.scopes, action="revoke")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_mark_used(*, key: ApiKey) -> None:
    """Record last use, at most once a minute per key so calls do not write on every hit."""
    now = timezone.now()
    if key.last_used_at and (now - key.last_used_at).total_seconds() < (
        LAST_USED_RESOLUTION_SECONDS
    ):
        return
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    key.last_used_at = now


def expert_profile_verify(*, profile: ExpertProfile, moderator: User, note: str) -> ExpertProfile:
    """Mark an expert verified after a moderator checked credentials; the note is kept."""
    profile.verified = True
    profile.verified_by = moderator
    profile.verified_at = timezone.now()
    profile.verification_note = note
    profile.save(update_fields=["verified", "verified_by", "verified_at", "verification_note"])
    return profile


def moderators_group_sync(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create the moderators group and give it exactly the permissions that the apps list.

    Each app's AppConfig names what its moderators may do in `moderator_permissions`
    (codenames), so a higher context adds its own without accounts importing it.
    Idempotent; runs after every `migrate` (see AccountsConfig.ready).
    """
    from django.apps import apps
    from django.contrib.auth.models import Group, Permission

    from accounts.models import MODERATORS_GROUP

    wanted = {
        (config.label, codename)
        for config in apps.get_app_configs()
        for codename in getattr(config, "moderator_permissions", ())
    }
    group, _ = Group.objects.using(using).get_or_create(name=MODERATORS_GROUP)
    perms = (
        Permission.objects.using(using)
        .filter(content_type__app_label__in={label for label, _ in wanted})
        .select_related("content_type")
    )
    group.permissions.set([p for p in perms if (p.content_type.app_label, p.codename) in wanted])
