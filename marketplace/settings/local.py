"""The embedded default (`make run`): one machine, SQLite and Valkey under var/."""

import os

from marketplace.settings.base import *  # noqa: F403
from marketplace.settings.base import STATIC_ROOT, VAR_DIR
from marketplace.settings.env import env_bool

DEBUG = env_bool("DEBUG", True)

VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite and Valkey live here
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it

# Nothing downloads weights here: base models come from packages and the model cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
