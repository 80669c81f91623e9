"""The product's URLs plus `bench/bare`: the floor a Django view costs on the same server
(the same middleware, no database), for the catalogue bench's requests/s ratio."""

from django.http import JsonResponse
from django.urls import path

from marketplace.urls import urlpatterns as product_urlpatterns


def bare(request):
    return JsonResponse({"data": [], "has_more": False})


urlpatterns = [path("bench/bare", bare), *product_urlpatterns]

handler400 = "marketplace.errors.bad_request"
handler403 = "marketplace.errors.permission_denied"
handler404 = "marketplace.errors.page_not_found"
handler500 = "marketplace.errors.server_error"
