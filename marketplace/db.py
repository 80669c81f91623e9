"""Where a piece of code stands with respect to the database transaction."""

from django.db import DEFAULT_DB_ALIAS, connections


def in_transaction(using: str = DEFAULT_DB_ALIAS) -> bool:
    """True inside an `atomic` block opened by the code itself. The blocks a test case
    wraps each test in do not count (Django's own rule for durable atomics), so a check
    that a slow call runs outside any transaction holds the same in tests as in
    production."""
    return any(
        not getattr(block, "_from_testcase", False) for block in connections[using].atomic_blocks
    )
