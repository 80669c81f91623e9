"""Settings of the serving load bench's processes only (bench/serving_load.py): the
product's base settings with DEBUG off, plus a bench-only URLconf that adds a bare view."""

from marketplace.settings.base import *  # noqa: F403

DEBUG = False
ROOT_URLCONF = "serving_urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
