import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")
application = get_wsgi_application()

# Uploads half-spooled by a web process that died (SIGKILL, OOM) are removed here, when
# its replacement starts.
from marketplace.storage import upload_spools_sweep  # noqa: E402

upload_spools_sweep()
