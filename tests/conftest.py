"""Personas and clients shared by every suite.

alice is an expert, bob a buyer, carol a moderator, mallory a stranger with an account;
each has verified their email address. `make_user(..., email_verified=False)` makes one
who has not (a fresh sign-up).
"""

import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import MODERATORS_GROUP, ExpertProfile, User
from accounts.services import api_key_create, user_mark_email_verified


def make_user(email: str, *, email_verified: bool = True, **fields) -> User:
    user = User.objects.create_user(email=email, password="correct horse battery", **fields)
    if email_verified:
        user_mark_email_verified(user=user)
    return user


@pytest.fixture(autouse=True)
def own_rate_windows(settings):
    """Each test counts in rate windows of its own: Redis outlives the test database, whose
    ids start again at 1, so a counter of an earlier run's user 1 would meet this one's."""
    settings.RATE_LIMIT_KEY_PREFIX = f"niche-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def fresh_access_cache():
    """The gateway's per-process cache of keys, licence checks and versions starts empty:
    ids and slugs repeat from one test's database to the next (never in production)."""
    from serving import access_cache, gateway_async

    access_cache.clear()
    gateway_async._versions.clear()


@pytest.fixture
def alice(db) -> User:
    user = make_user("alice@example.com", display_name="Alice", is_expert=True)
    ExpertProfile.objects.create(user=user, headline="Radiologist")
    return user


@pytest.fixture
def bob(db) -> User:
    return make_user("bob@example.com", display_name="Bob")


@pytest.fixture
def carol(db) -> User:
    from django.contrib.auth.models import Group

    # The group and its permissions come from post_migrate (accounts.apps), also
    # after a transactional test's flush.
    user = make_user("carol@example.com", display_name="Carol", is_staff=True)
    user.groups.add(Group.objects.get(name=MODERATORS_GROUP))
    return user


@pytest.fixture
def mallory(db) -> User:
    return make_user("mallory@example.com", display_name="Mallory")


@pytest.fixture
def api():
    """A client for one persona: `api(alice)` authenticates with a fresh full-scope key."""

    def client_for(user: User | None = None, scopes=("read", "train", "infer")) -> APIClient:
        client = APIClient()
        if user is not None:
            _, plaintext = api_key_create(user=user, name="test", scopes=list(scopes))
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    return client_for


@pytest.fixture(scope="session")
def s3_emulator():
    """An S3-compatible emulator (moto's standalone server) on 127.0.0.1, one per run."""
    from tests.s3_emulator import S3Emulator

    emulator = S3Emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def s3_storage(s3_emulator, monkeypatch, settings):
    """The default storage on a fresh bucket of the emulator, built from the environment
    exactly as production.py builds it; the bucket's name."""
    from marketplace.settings.object_storage import default_storage_config

    bucket = s3_emulator.new_bucket()
    for name, value in s3_emulator.env(bucket).items():
        monkeypatch.setenv(name, value)
    settings.STORAGES = {**settings.STORAGES, "default": default_storage_config("s3")}
    return bucket
