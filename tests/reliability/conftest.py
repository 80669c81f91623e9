"""The load run (test_load.py) is too slow for `make test`: it is collected only with
NICHE_LOAD=1, which `make reliability` sets."""

import os

collect_ignore_glob = [] if os.environ.get("NICHE_LOAD") == "1" else ["test_*.py"]

# The integration tests' real services: worker processes on the test database.
from tests.integration.conftest import (  # noqa: E402, F401
    redis_url,
    send_tasks_to_the_broker,
    shipped_base_models,
    worker_env,
)
