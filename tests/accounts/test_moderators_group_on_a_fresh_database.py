"""`manage.py migrate` on an empty database leaves a moderators group that can moderate.

Nothing here calls moderators_group_sync: the migration itself must give the group
every app's `moderator_permissions`, including apps whose permissions are created
after the accounts app's.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.apps import apps
from django.conf import settings

from accounts.models import MODERATORS_GROUP

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not getattr(settings, "POSTGRES_AVAILABLE", False), reason="creates a Postgres database"
    ),
]
REPO = Path(__file__).resolve().parents[2]


def _server() -> dict:
    db = settings.DATABASES["default"]
    return {
        "host": db["HOST"] or "127.0.0.1",
        "port": int(db["PORT"] or 5432),
        "user": db["USER"],
        "password": db["PASSWORD"] or None,
    }


@pytest.fixture
def empty_database():
    """A new, empty Postgres database on the test server; dropped afterwards."""
    name = f"niche_fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **_server()) as maintenance:
        maintenance.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **_server()) as maintenance:
            maintenance.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _database_url(name: str) -> str:
    server = _server()
    password = f":{server['password']}" if server["password"] else ""
    return f"postgres://{server['user']}{password}@{server['host']}:{server['port']}/{name}"


def test_migrating_a_fresh_database_gives_moderators_every_apps_permissions(empty_database):
    wanted = {
        (config.label, codename)
        for config in apps.get_app_configs()
        for codename in getattr(config, "moderator_permissions", ())
    }
    assert {label for label, _ in wanted} >= {"accounts", "listings", "training_worker"}
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "DATABASE_URL": _database_url(empty_database),
    }

    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip

    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(dbname=empty_database, **_server()) as fresh:
        granted = set(
            fresh.execute(
                "SELECT ct.app_label, p.codename FROM auth_group g"
                " JOIN auth_group_permissions gp ON gp.group_id = g.id"
                " JOIN auth_permission p ON p.id = gp.permission_id"
                " JOIN django_content_type ct ON ct.id = p.content_type_id"
                " WHERE g.name = %s",
                [MODERATORS_GROUP],
            ).fetchall()
        )
    assert granted == wanted
