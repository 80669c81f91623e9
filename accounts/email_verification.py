"""The emailed verification link's token: signed, expiring, bound to one user and address.

The token is Django's signing (HMAC-SHA256 under SECRET_KEY) of `{"user", "email"}` with a
timestamp; it is valid for EMAIL_VERIFICATION_LINK_HOURS. It is single-use because what
it does can be done once: verifying an address that is already verified is refused
(accounts.services.email_verification_confirm), and a token made for an earlier address
does nothing once the user's address changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing

from accounts.errors import InvalidVerificationLink, VerificationLinkExpired

SALT = "accounts.email-verification"
# The portal page an emailed link opens (frontend.urls): it shows a button that confirms.
LINK_URL_NAME = "verify-email"


class _Signer(signing.TimestampSigner):
    """Django's, with the clock as a parameter (so a test can make a link that is old)."""

    def __init__(self, *, now: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self._now = now

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time() if self._now is None else self._now))


@dataclass(frozen=True)
class VerificationClaim:
    user_id: int
    email: str


def make_token(*, user_id: int, email: str, now: float | None = None) -> str:
    return _Signer(salt=SALT, now=now).sign_object({"user": user_id, "email": email}, compress=True)


def read_token(token: str) -> VerificationClaim:
    """Who and which address a token was made for. Raises VerificationLinkExpired (422)
    past EMAIL_VERIFICATION_LINK_HOURS, InvalidVerificationLink (422) when it was not made
    here or was altered."""
    max_age = timedelta(hours=settings.EMAIL_VERIFICATION_LINK_HOURS)
    try:
        claim = _Signer(salt=SALT).unsign_object(token, max_age=max_age)
    except signing.SignatureExpired:
        raise VerificationLinkExpired(
            "This verification link has expired; send yourself a new one from your dashboard."
        ) from None
    except (signing.BadSignature, ValueError):
        raise InvalidVerificationLink(
            "This verification link is not valid; use the latest link we sent you.",
            fields={"token": ["Not a valid verification link."]},
        ) from None
    return VerificationClaim(user_id=claim["user"], email=claim["email"])
