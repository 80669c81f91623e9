"""The hardening suites share one fixture world per module, rolled back at its end."""

import pytest
from django.db import transaction

from tests.hardening.world import World, build_world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> World:
    """Built once per module inside a transaction that is rolled back afterwards; each
    test's own `db` transaction nests in it as a savepoint."""
    with django_db_blocker.unblock(), transaction.atomic():
        built = build_world()
        yield built
        transaction.set_rollback(True)
