"""The product's URLs plus `bench/bare`: what an async Django view costs on the same server
(the same middleware, no database, no Redis), the floor of the load bench's requests/s."""

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from marketplace.urls import urlpatterns as product_urlpatterns


@csrf_exempt  # POSTed by the load client, as predict is
async def bare(request):
    return JsonResponse({"predictions": [{"label": "billing", "score": 1.0}]})


urlpatterns = [path("bench/bare", bare), *product_urlpatterns]

handler400 = "marketplace.errors.bad_request"
handler403 = "marketplace.errors.permission_denied"
handler404 = "marketplace.errors.page_not_found"
handler500 = "marketplace.errors.server_error"
