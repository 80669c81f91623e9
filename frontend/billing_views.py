"""Commerce in the portal: offers, checkout, licences, Connect onboarding, earnings;
and the platform's public signing key."""

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from billing.signing import platform_signing_key


@require_GET
def signing_key_document(request):
    """The public half of the key that signs export bundles (`MANIFEST.sig`)."""
    response = JsonResponse(platform_signing_key().public_document())
    response["Cache-Control"] = "public, max-age=3600"
    return response
