"""Production: everything from the environment, secure by default.

Required: SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL, REDIS_URL, NICHE_SIGNING_KEY,
STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, EMAIL_HOST (or an EMAIL_BACKEND other than the
console), AWS_STORAGE_BUCKET_NAME (unless STORAGE_BACKEND=local).
"""

import base64

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from marketplace.settings.base import *  # noqa: F403
from marketplace.settings.env import env_bool, env_int, env_list, env_str
from marketplace.settings.object_storage import default_storage_config, storage_backend

SECRET_KEY = env_str("SECRET_KEY")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters.")
# Optional, but never guessable when set: an empty one derives from SECRET_KEY / is off.
for _name in ("SEALED_SPLIT_SECRET", "HEALTHZ_TOKEN", "METRICS_TOKEN"):
    if 0 < len(globals()[_name]) < 32:
        raise ImproperlyConfigured(f"{_name} must be at least 32 random characters.")
# Every machine signs export bundles with one key: never a key generated per machine.
_signing_key = env_str("NICHE_SIGNING_KEY")
try:
    if len(base64.b64decode(_signing_key, validate=True)) != 32:
        raise ValueError("not 32 bytes")
except ValueError as exc:
    raise ImproperlyConfigured(
        "NICHE_SIGNING_KEY must be the base64 of a 32-byte Ed25519 private key."
    ) from exc
# No sandbox in production: purchases must take real payments and webhooks must verify.
for _name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
    if not globals()[_name]:
        raise ImproperlyConfigured(
            f"{_name} is required in production (without it billing runs in sandbox mode)."
        )
# New accounts get their verification link by email: it must leave the machine.
if EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend":  # noqa: F405
    raise ImproperlyConfigured(
        "EMAIL_HOST is required in production: new accounts verify their address by email."
    )
if STRIPE_API_BASE:  # noqa: F405
    raise ImproperlyConfigured("STRIPE_API_BASE is for tests; production talks to Stripe.")
DEBUG = False
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
# Required here, unlike the embedded default that falls back to SQLite and local Redis.
DATABASES = {"default": dj_database_url.parse(env_str("DATABASE_URL"), conn_max_age=60)}
REDIS_URL = env_str("REDIS_URL")
CACHES["default"]["LOCATION"] = REDIS_URL  # noqa: F405
CELERY_BROKER_URL = CELERY_RESULT_BACKEND = REDIS_URL

# Structured logs: JSON lines unless LOG_FORMAT says otherwise. Celery workers keep the
# LOGGING above instead of replacing the root logger's handlers with their own.
LOG_FORMAT = env_str("LOG_FORMAT", "json")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT  # noqa: F405
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
# Production keeps files in an S3-compatible bucket (AWS_STORAGE_BUCKET_NAME required);
# STORAGE_BACKEND=local only where every web and worker process shares one disk.
STORAGE_BACKEND = storage_backend("s3")
STORAGES = {
    "default": default_storage_config(STORAGE_BACKEND),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
