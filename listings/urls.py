from django.urls import path

from listings import apis

urlpatterns = [
    path("listings", apis.ListingCatalogueApi.as_view(), name="api-listings"),
    path("listings/mine", apis.ListingMineApi.as_view(), name="api-listings-mine"),
    path("listings/<slug:slug>", apis.ListingDetailApi.as_view(), name="api-listing"),
    path("listings/<slug:slug>/submit", apis.ListingSubmitApi.as_view()),
    path("listings/<slug:slug>/delist", apis.ListingDelistApi.as_view()),
    path("listings/<slug:slug>/composable", apis.ListingComposableApi.as_view()),
    path("gardens", apis.GardenCreateApi.as_view(), name="api-gardens"),
    path("gardens/<slug:slug>/members/restore", apis.GardenMemberRestoreApi.as_view()),
    path("listings/<slug:slug>/versions", apis.ListingVersionProposeApi.as_view()),
    path("listings/<slug:slug>/reviews", apis.ReviewListCreateApi.as_view()),
    path("listings/<slug:slug>/reviews/<int:review_id>/reply", apis.ReviewReplyApi.as_view()),
    path("listings/<slug:slug>/reports", apis.ReportCreateApi.as_view()),
]
