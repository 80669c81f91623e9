"""The ASGI application every web process serves (marketplace/gunicorn_conf.py)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")
django.setup(set_prefix=False)

from marketplace.async_middleware import AsgiHandler  # noqa: E402  (needs the apps loaded)
from marketplace.middleware import AsgiBodyLimit  # noqa: E402

django_application = AsgiHandler()

application = AsgiBodyLimit(django_application)

# Uploads half-spooled by a web process that died (SIGKILL, OOM) are removed here, when
# its replacement starts (the request body itself is spooled by Django's ASGI handler to
# an unlinked temporary file, which the kernel frees with the process).
from marketplace.storage import upload_spools_sweep  # noqa: E402

upload_spools_sweep()
