import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")
django_application = get_asgi_application()

from marketplace.middleware import AsgiBodyLimit  # noqa: E402  (needs the apps loaded)

application = AsgiBodyLimit(django_application)
