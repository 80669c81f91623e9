from django.urls import path

from accounts import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="api-me"),
    path("me/verify-email", apis.EmailVerifyApi.as_view(), name="api-me-verify-email"),
    path(
        "me/verify-email/resend",
        apis.EmailVerificationResendApi.as_view(),
        name="api-me-verify-email-resend",
    ),
    path("api_keys", apis.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api_keys/<uuid:key_id>", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
]
