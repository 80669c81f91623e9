"""Tests: the real Postgres and Redis when reachable.

DATABASE_URL (default: the local Postgres, database `test`) is used when its server
answers; otherwise the suite runs on SQLite and the tests that need Postgres skip.
With CI=true an unreachable service is an error, never a skip.
"""

import os
import socket
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from marketplace.settings.base import *  # noqa: F403
from marketplace.settings.base import STATIC_ROOT, VAR_DIR
from marketplace.settings.env import env_bool, env_str

IS_CI = env_bool("CI", False)
DEFAULT_TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), 1.0):
            return True
    except OSError:
        return False


_database_url = env_str("DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
if _database_url.startswith("postgres") and not _reachable(_database_url, 5432):
    if IS_CI:
        raise ImproperlyConfigured(f"CI=true but PostgreSQL at {_database_url} is unreachable.")
    _database_url = f"sqlite:///{VAR_DIR / 'test.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(_database_url)}
POSTGRES_AVAILABLE = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
os.environ["DATABASE_URL"] = _database_url  # worker processes started by tests inherit it

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
# Unit tests keep cache state per process; Redis itself is covered by integration tests.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
MEDIA_ROOT = VAR_DIR / "test-media"
MODEL_CACHE_DIR = VAR_DIR / "models"  # shared with `make run`: built base models are reused
# The evaluation's generalist LLM is the tiny causal LM here (seconds); SmolLM2 in production.
EVALUATION_GENERALIST_LLM = "cache:tiny-causal"
# The router's generalist for generation: the tiny causal LM workers in tests load in a second.
ROUTER_FALLBACK_GENERATION_BASE = "tiny-causal"
# Its cost is in tokens, not parameters (~0.2 CPU-s a row with 4 labels): a few rows suffice.
EVALUATION_GENERALIST_MAX_ROWS = 16
VAR_DIR.mkdir(parents=True, exist_ok=True)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it

# Nothing downloads weights here: base models come from packages and the model cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Unit tests run tasks inline (on commit). Integration tests switch this off in the test
# process and start real worker processes with marketplace.settings.test_worker (not
# eager), so tasks a worker sends go through Redis too.
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
