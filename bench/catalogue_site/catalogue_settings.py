"""Settings of the catalogue bench's server only (bench/catalogue.py): the product's base
settings with DEBUG off, plus a bench-only URLconf that adds a bare JsonResponse view."""

from marketplace.settings.base import *  # noqa: F403

DEBUG = False
ROOT_URLCONF = "catalogue_urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
