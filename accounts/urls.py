from django.urls import path

from accounts import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="api-me"),
    path("api_keys", apis.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api_keys/<uuid:key_id>", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
]
