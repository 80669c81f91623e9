"""The embedded default (`make run`): one machine, SQLite and Valkey under var/."""

from marketplace.settings.base import *  # noqa: F403
from marketplace.settings.base import STATIC_ROOT, VAR_DIR
from marketplace.settings.env import env_bool

DEBUG = env_bool("DEBUG", True)

VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite and Valkey live here
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise expects it
