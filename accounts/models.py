"""Users, expert profiles and API keys."""

import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

MODERATORS_GROUP = "moderators"


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra):
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra):
        """`manage.py createsuperuser`: the operator at the console vouches for the address."""
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        user = self.create_user(email, password, **extra)
        user.verified_email, user.email_verified_at = user.email, timezone.now()
        user.save(using=self._db, update_fields=["verified_email", "email_verified_at"])
        return user


class User(AbstractBaseUser, PermissionsMixin):
    """A person; email is the login. A user may be an expert, a buyer, or both."""

    email = models.EmailField(unique=True)
    display_name = models.CharField(max_length=120, blank=True)
    is_expert = models.BooleanField(default=False, help_text="Sells models.")
    is_buyer = models.BooleanField(default=True, help_text="Buys licences and calls models.")
    is_staff = models.BooleanField(default=False, help_text="Can log into the admin console.")
    is_active = models.BooleanField(
        default=True, help_text="Unset to suspend: log-ins and API keys stop working."
    )
    date_joined = models.DateTimeField(default=timezone.now)
    # The address its owner proved to hold (a signed link), and when. Changing `email`
    # leaves this behind, so a changed address is unverified until proven again.
    # Written only by accounts.services (email_verification_confirm, user_mark_email_verified).
    verified_email = models.EmailField(blank=True)
    email_verified_at = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    @property
    def name(self) -> str:
        return self.display_name or self.email.split("@")[0]

    @property
    def email_verified(self) -> bool:
        """Whether the current address is the one its owner proved to hold."""
        return self.email_verified_at is not None and self.verified_email == self.email

    @property
    def is_moderator(self) -> bool:
        return self.is_active and (
            self.is_superuser
            or (self.is_staff and self.groups.filter(name=MODERATORS_GROUP).exists())
        )


class ExpertProfile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="expert_profile"
    )
    headline = models.CharField(max_length=160, blank=True)
    bio = models.TextField(blank=True)
    domains = models.JSONField(default=list, blank=True)
    # Set only by moderators, through accounts.services.expert_profile_verify.
    verified = models.BooleanField(default=False)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    verification_note = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"Expert profile of {self.user}"


class ApiKeyScope(models.TextChoices):
    READ = "read", "Read"
    TRAIN = "train", "Train"
    INFER = "infer", "Infer"
    # Minting and revoking keys: never a default, so a leaked key cannot outlive its
    # revocation by minting successors.
    KEYS = "keys", "Manage API keys"


DEFAULT_API_KEY_SCOPES = [ApiKeyScope.READ, ApiKeyScope.TRAIN, ApiKeyScope.INFER]


class ApiKey(models.Model):
    """A machine credential. Only a prefix and the SHA-256 of the secret are stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Calls a minute through this key, under its user's SERVING_RATE_LIMIT_PER_MINUTE
    # (never above it); null: only the user's limit applies.
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
