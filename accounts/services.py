"""Writes of the accounts context."""

import hashlib
import ipaddress
import logging
import secrets
import string

from django.conf import settings
from django.core.mail import send_mail
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts import email_verification
from accounts.errors import (
    AccountServiceUnavailable,
    ApiKeyLimitReached,
    ApiKeyNotFound,
    ApiKeyScopeExceedsCaller,
    EmailAlreadyVerified,
    EmailNotVerified,
    EmailTaken,
    InvalidKeyRateLimit,
    InvalidScopes,
    InvalidVerificationLink,
    SignUpRateLimited,
    VerificationEmailRateLimited,
)
from accounts.models import ApiKey, ApiKeyScope, ExpertProfile, User
from accounts.throttle import ThrottleStoreUnavailable, Window, WindowFull, windows_admit
from marketplace import access_epochs
from marketplace.errors import RateLimitedError

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "nk_"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX_RANDOM_CHARS = 8
LAST_USED_RESOLUTION_SECONDS = 60
HOUR_SECONDS = 3600
DAY_SECONDS = 86400


def hash_api_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def api_key_prefix_of(plaintext: str) -> str:
    """The public, indexed part of a key: `nk_` and eight random characters."""
    return plaintext[: len(API_KEY_PREFIX) + _PREFIX_RANDOM_CHARS]


def _address_subject(address: str) -> str:
    """An IPv4 address as is; an IPv6 address by its /64, which one subscriber holds whole."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _admit(windows: list[tuple[Window, str]], refusal: type[RateLimitedError]) -> None:
    """Count one event in every window, or raise `refusal` (429) with the full window's
    message, or AccountServiceUnavailable (503) without Redis: a throttle that cannot count
    refuses rather than lets everything through."""
    try:
        windows_admit([window for window, _ in windows])
    except WindowFull as full:
        message = dict(windows)[full.window]
        minutes = -(-full.retry_after // 60)
        raise refusal(
            message.format(limit=full.window.limit, minutes=minutes, seconds=full.retry_after),
            retry_after=full.retry_after,
        ) from None
    except ThrottleStoreUnavailable as exc:
        logger.warning("throttle store unreachable: %s", exc)
        raise AccountServiceUnavailable(
            "This cannot be done right now; try again in a minute."
        ) from None


def user_sign_up(
    *,
    email: str,
    password: str,
    client_address: str,
    display_name: str = "",
    is_expert: bool = False,
) -> User:
    """Create a user (buyer always, expert if asked) and, for experts, an empty profile.
    The address is unverified until its owner opens the link that email_verification_send
    mails.

    Each attempt counts, before anything is written, against SIGNUP_MAX_PER_ADDRESS_PER_HOUR
    for `client_address` (accounts.client_address) and SIGNUP_MAX_PER_HOUR for everyone:
    past either, SignUpRateLimited (429, nothing counted); AccountServiceUnavailable (503)
    when Redis cannot be reached. Raises EmailTaken (409) if the address already has an
    account (an attempt that counts, so probing for accounts is throttled too).
    """
    email = email.strip().lower()
    address = _address_subject(client_address)
    _admit(
        [
            (
                Window(f"signup:address:{address}", settings.SIGNUP_MAX_PER_ADDRESS_PER_HOUR,
                       HOUR_SECONDS),
                "Too many sign-ups from your network ({limit} an hour); "
                "try again in {minutes} min.",
            ),
            (
                Window("signup:all", settings.SIGNUP_MAX_PER_HOUR, HOUR_SECONDS),
                "Sign-ups are paused for a while; try again in {minutes} min.",
            ),
        ],
        SignUpRateLimited,
    )  # fmt: skip
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


# --- email verification -------------------------------------------------------------------


def user_require_verified_email(*, user: User, action: str) -> None:
    """Raise EmailNotVerified (403) unless the user's current address is verified.
    `action` completes "Verify your email address before you …"."""
    if not user.email_verified:
        raise EmailNotVerified(
            f"Verify your email address before you {action}: open the link we sent to "
            f"{user.email}, or send a new one from your dashboard "
            "(or POST /api/v1/me/verify-email/resend)."
        )


def email_verification_token(*, user: User, now: float | None = None) -> str:
    """A signed link token for the user's current address (accounts.email_verification)."""
    return email_verification.make_token(user_id=user.pk, email=user.email, now=now)


def email_verification_send(*, user: User, site_url: str) -> str:
    """Email the user a link that verifies their current address; returns the link.

    `site_url` is where the portal is served (https://niche.example); the link opens its
    verify-email page and lives EMAIL_VERIFICATION_LINK_HOURS. One link per
    EMAIL_VERIFICATION_RESEND_SECONDS and EMAIL_VERIFICATION_MAX_PER_DAY a day per user
    (VerificationEmailRateLimited, 429: a sign-up made with someone else's address cannot
    flood their inbox). Raises EmailAlreadyVerified (409), AccountServiceUnavailable (503)
    when Redis or the mail server cannot be reached.
    """
    if user.email_verified:
        raise EmailAlreadyVerified("Your email address is already verified.")
    subject = f"verify-email:user:{user.pk}"
    _admit(
        [
            (
                Window(f"{subject}:resend", 1, settings.EMAIL_VERIFICATION_RESEND_SECONDS),
                "A link was sent moments ago; you can ask for another in {seconds} s.",
            ),
            (
                Window(f"{subject}:day", settings.EMAIL_VERIFICATION_MAX_PER_DAY, DAY_SECONDS),
                "We have sent you {limit} links today; try again in {minutes} min.",
            ),
        ],
        VerificationEmailRateLimited,
    )
    token = email_verification_token(user=user)
    link = site_url.rstrip("/") + reverse(email_verification.LINK_URL_NAME, args=[token])
    context = {"user": user, "link": link, "hours": settings.EMAIL_VERIFICATION_LINK_HOURS}
    try:
        send_mail(
            render_to_string("accounts/verify_email_subject.txt", context).strip(),
            render_to_string("accounts/verify_email.txt", context),
            None,  # DEFAULT_FROM_EMAIL
            [user.email],
        )
    except OSError as exc:  # smtplib's errors included
        logger.warning("verification email to user %s not sent: %s", user.pk, exc)
        raise AccountServiceUnavailable(
            "We could not send the email just now; try again in a few minutes."
        ) from None
    return link


def email_verification_confirm(*, token: str) -> User:
    """Verify the address a link was made for (the user's row locked); returns the user.

    Single use: a second use, or a concurrent one, finds the address verified
    (EmailAlreadyVerified, 409). Raises VerificationLinkExpired (422),
    InvalidVerificationLink (422) for a link that was altered, whose user is gone or
    suspended, or made for an address the user no longer has.
    """
    claim = email_verification.read_token(token)
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=claim.user_id, is_active=True).first()
        if user is None or user.email != claim.email:
            raise InvalidVerificationLink(
                "This verification link is not valid any more; use the latest link we sent you.",
                fields={"token": ["Not a valid verification link."]},
            )
        if user.email_verified:
            raise EmailAlreadyVerified("This address is already verified.")
        user.verified_email, user.email_verified_at = user.email, timezone.now()
        user.save(update_fields=["verified_email", "email_verified_at"])
    return user


def user_mark_email_verified(*, user: User) -> User:
    """Record the user's current address as verified without a link: an operator vouches
    for it (`create_api_key --verify-email`, the demo's seeded accounts). Idempotent."""
    if not user.email_verified:
        user.verified_email, user.email_verified_at = user.email, timezone.now()
        user.save(update_fields=["verified_email", "email_verified_at"])
    return user


# --- API keys -------------------------------------------------------------------------------


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


def _clean_key_rate_limit(limit: int | None) -> int | None:
    ceiling = settings.SERVING_RATE_LIMIT_PER_MINUTE
    if limit is not None and not 1 <= limit <= ceiling:
        raise InvalidKeyRateLimit(
            f"A key's rate limit must be from 1 to {ceiling} calls a minute (your account's).",
            fields={"rate_limit_per_minute": [f"A whole number from 1 to {ceiling}."]},
        )
    return limit


def api_key_create(
    *,
    user: User,
    name: str,
    scopes: list[str],
    minted_by: ApiKey | None = None,
    rate_limit_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again.

    Raises EmailNotVerified (403) until the user verified their address. `minted_by` is
    the API key making the call (None for a session or the console); raises
    ApiKeyScopeExceedsCaller (403) if the new key would be wider than it. The key's own
    `rate_limit_per_minute` (optional) may not exceed SERVING_RATE_LIMIT_PER_MINUTE, the
    user's (InvalidKeyRateLimit, 422). Raises ApiKeyLimitReached (409) when the user
    already holds API_KEYS_MAX_PER_USER live keys, counted under a lock on the user's row
    so concurrent creations cannot both take the last place.
    """
    user_require_verified_email(user=user, action="create an API key")
    scopes = _clean_scopes(scopes)
    _require_within_caller(caller=minted_by, scopes=scopes, action="mint")
    rate_limit_per_minute = _clean_key_rate_limit(rate_limit_per_minute)
    for _ in range(5):
        prefix = API_KEY_PREFIX + "".join(
            secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_RANDOM_CHARS)
        )
        plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                _require_a_free_key_place(user)
                key = ApiKey.objects.create(
                    user=user,
                    name=name.strip() or "API key",
                    prefix=prefix,
                    key_hash=hash_api_key(plaintext),
                    scopes=scopes,
                    rate_limit_per_minute=rate_limit_per_minute,
                )
            return key, plaintext
        except IntegrityError:
            continue  # prefix collision: astronomically rare, draw again
    raise RuntimeError("could not draw a unique API key prefix")


def _require_a_free_key_place(user: User) -> None:
    """Inside the creating transaction: lock the user's row, then count their live keys."""
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
    ceiling = settings.API_KEYS_MAX_PER_USER
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= ceiling:
        raise ApiKeyLimitReached(
            f"You already hold {ceiling} live API keys, the most one account may; "
            "revoke one you no longer use first.",
            fields={"api_keys": [f"At most {ceiling} live keys."]},
        )


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
        access_epochs.bump(user_id=user.pk)  # the very next call with it is refused
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
