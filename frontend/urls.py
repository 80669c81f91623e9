from django.contrib.auth import views as auth_views
from django.urls import path

from frontend import (
    batch_views,
    billing_views,
    catalogue_views,
    evaluation_views,
    evidence_views,
    leaderboard_views,
    serving_views,
    studio_views,
    views,
)

urlpatterns = [
    path("", views.home, name="home"),
    path(
        ".well-known/niche-signing-key",
        billing_views.signing_key_document,
        name="signing-key",
    ),
    path("signup/", views.sign_up, name="sign-up"),
    path("verify-email/<str:token>/", views.verify_email, name="verify-email"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(success_url="/password/done/"),
        name="password-change",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/verify-email/", views.verify_email_resend, name="verify-email-resend"),
    path("dashboard/api-keys/", views.api_key_create, name="api-key-create"),
    path("dashboard/api-keys/<uuid:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("studio/", studio_views.studio_home, name="studio"),
    path("studio/datasets/", studio_views.dataset_upload, name="studio-dataset-upload"),
    path("studio/datasets/<uuid:dataset_id>/", studio_views.dataset_detail, name="studio-dataset"),
    path("studio/jobs/", studio_views.job_create, name="studio-job-create"),
    path("studio/jobs/<uuid:job_id>/", studio_views.job_detail, name="studio-job"),
    path("studio/jobs/<uuid:job_id>/cancel/", studio_views.job_cancel, name="studio-job-cancel"),
    path(
        "studio/models/<uuid:version_id>/", studio_views.model_version_detail, name="studio-model"
    ),
    path("studio/models/<uuid:version_id>/list/", catalogue_views.listing_new, name="listing-new"),
    path("catalogue/", catalogue_views.catalogue_home, name="catalogue"),
    path("leaderboards/", leaderboard_views.leaderboard_index, name="leaderboards"),
    path(
        "leaderboards/<str:task>/<slug:benchmark>/",
        leaderboard_views.leaderboard_page,
        name="leaderboard",
    ),
    path("gardens/new/", catalogue_views.garden_new, name="garden-new"),
    path("compare/", evidence_views.compare_page, name="compare"),
    path("evaluations/", evaluation_views.evaluation_list, name="evaluations"),
    path("evaluations/<str:evaluation_id>/", evaluation_views.evaluation_detail, name="evaluation"),
    path(
        "evaluations/<str:evaluation_id>/delete/",
        evaluation_views.evaluation_delete,
        name="evaluation-delete",
    ),
    path(
        "evaluations/<str:evaluation_id>/rows/delete/",
        evaluation_views.evaluation_rows_delete,
        name="evaluation-rows-delete",
    ),
    path(
        "evaluations/<str:evaluation_id>/rerun/",
        evaluation_views.evaluation_rerun,
        name="evaluation-rerun",
    ),
    path("catalogue/<slug:slug>/", catalogue_views.listing_page, name="catalogue-listing"),
    path(
        "catalogue/<slug:slug>/submit/",
        catalogue_views.listing_submit,
        name="catalogue-listing-submit",
    ),
    path(
        "catalogue/<slug:slug>/members/restore/",
        catalogue_views.garden_restore,
        name="catalogue-garden-restore",
    ),
    path(
        "catalogue/<slug:slug>/private-evaluations/",
        evaluation_views.listing_private_evaluation,
        name="catalogue-listing-private-evaluation",
    ),
    path(
        "catalogue/<slug:slug>/composable/",
        catalogue_views.listing_composable,
        name="catalogue-listing-composable",
    ),
    path(
        "catalogue/<slug:slug>/review/",
        catalogue_views.listing_review,
        name="catalogue-listing-review",
    ),
    path(
        "catalogue/<slug:slug>/report/",
        catalogue_views.listing_report,
        name="catalogue-listing-report",
    ),
    path("catalogue/<slug:slug>/offers/", billing_views.offer_create, name="offer-create"),
    path(
        "catalogue/<slug:slug>/offers/<uuid:offer_id>/",
        billing_views.offer_update,
        name="offer-update",
    ),
    path(
        "catalogue/<slug:slug>/offers/<uuid:offer_id>/retire/",
        billing_views.offer_retire,
        name="offer-retire",
    ),
    path("catalogue/<slug:slug>/buy/", billing_views.checkout_start, name="checkout-start"),
    path("catalogue/<slug:slug>/try/", serving_views.listing_try, name="catalogue-listing-try"),
    path("licences/", billing_views.licence_list, name="licences"),
    path("licences/batches/", batch_views.batch_list, name="batches"),
    path(
        "licences/batches/<str:batch_id>/cancel/",
        batch_views.batch_cancel,
        name="batch-cancel",
    ),
    path("licences/return/", billing_views.licence_return, name="licence-return"),
    path(
        "licences/<uuid:licence_id>/status/",
        billing_views.licence_status,
        name="licence-status",
    ),
    path(
        "licences/<uuid:licence_id>/cancel/",
        billing_views.licence_cancel,
        name="licence-cancel",
    ),
    path(
        "licences/<uuid:licence_id>/resume/",
        billing_views.licence_resume,
        name="licence-resume",
    ),
    path(
        "licences/<uuid:licence_id>/spend-cap/",
        billing_views.licence_spend_cap,
        name="licence-spend-cap",
    ),
    path("payouts/", billing_views.payouts, name="payouts"),
    path("payouts/onboard/", billing_views.payouts_onboard, name="payouts-onboard"),
    path("payouts/return/", billing_views.payouts_return, name="payouts-return"),
    path("earnings/", billing_views.earnings, name="earnings"),
]
