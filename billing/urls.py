"""API routes of commerce (under /api/v1/)."""

from django.urls import path

from billing import apis, export_apis, stripe_apis

urlpatterns = [
    path("billing/offers", apis.OfferListCreateApi.as_view(), name="api-billing-offers"),
    path("billing/offers/<uuid:offer_id>", apis.OfferDetailApi.as_view(), name="api-billing-offer"),
    path("billing/licenses", apis.LicenceListApi.as_view(), name="api-billing-licences"),
    path(
        "billing/licenses/<uuid:licence_id>",
        apis.LicenceDetailApi.as_view(),
        name="api-billing-licence",
    ),
    path(
        "billing/licenses/<uuid:licence_id>/cancel",
        apis.LicenceCancelApi.as_view(),
        name="api-billing-licence-cancel",
    ),
    path(
        "billing/licenses/<uuid:licence_id>/resume",
        apis.LicenceResumeApi.as_view(),
        name="api-billing-licence-resume",
    ),
    path("billing/usage", apis.UsageApi.as_view(), name="api-billing-usage"),
    path("billing/earnings", apis.EarningsApi.as_view(), name="api-billing-earnings"),
    path("listings/<slug:slug>/offers", apis.ListingOffersApi.as_view(), name="api-listing-offers"),
    path("billing/checkout", stripe_apis.CheckoutApi.as_view(), name="api-billing-checkout"),
    path("billing/connect", stripe_apis.ConnectAccountApi.as_view(), name="api-billing-connect"),
    path(
        "billing/connect/onboard",
        stripe_apis.ConnectOnboardApi.as_view(),
        name="api-billing-connect-onboard",
    ),
    path(
        "billing/stripe/webhook",
        stripe_apis.StripeWebhookApi.as_view(),
        name="api-billing-stripe-webhook",
    ),
    path(
        "models/<uuid:version_id>/export",
        export_apis.ModelVersionExportApi.as_view(),
        name="api-model-export",
    ),
]
