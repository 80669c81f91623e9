"""Settings of the web and worker processes of tests/integration/test_share_nothing.py.

The integration worker settings, except that the per-machine folders come from the
environment as in production (the test settings pin MEDIA_ROOT and MODEL_CACHE_DIR under
var/ for every process); storage follows STORAGE_BACKEND / AWS_* as everywhere.
"""

from pathlib import Path

from marketplace.settings.env import env_str
from marketplace.settings.test_worker import *  # noqa: F403

MEDIA_ROOT = Path(env_str("STORAGE_ROOT"))
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR"))
