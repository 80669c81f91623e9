from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from marketplace.api import api_not_found
from marketplace.health import healthz
from marketplace.metrics import metrics

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("training_worker.urls")),
    path("", include("listings.urls")),
    path("", include("billing.urls")),
    path("", include("serving.urls")),
    path("", include("evidence.urls")),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # Prometheus text format for the operators' scraper (METRICS_TOKEN; off when unset).
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its script as a file: the CSP allows no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    # The OpenAI-compatible API (its own error shape, its own catch-all for /v1/…).
    path("v1/", include("serving.openai_urls")),
    re_path(r"^(api|v1)/", api_not_found),
    path("", include("frontend.urls")),
]

handler400 = "marketplace.errors.bad_request"
handler403 = "marketplace.errors.permission_denied"
handler404 = "marketplace.errors.page_not_found"
handler500 = "marketplace.errors.server_error"

admin.site.site_header = "Niche moderation console"
admin.site.site_title = "Niche admin"
