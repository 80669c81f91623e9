from django.urls import path

from evidence import apis, compare_apis, leaderboard_apis

urlpatterns = [
    path("evaluations", apis.EvaluationListCreateApi.as_view(), name="api-evaluations"),
    path(
        "evaluations/<str:evaluation_id>", apis.EvaluationDetailApi.as_view(), name="api-evaluation"
    ),
    path("evaluations/<str:evaluation_id>/rerun", apis.EvaluationRerunApi.as_view()),
    path("evaluations/<str:evaluation_id>/rows", apis.EvaluationRowsApi.as_view()),
    path("listings/<slug:slug>/private-evaluations", apis.ListingEvaluationCountsApi.as_view()),
    path("compare", compare_apis.CompareApi.as_view(), name="api-compare"),
    path("leaderboards", leaderboard_apis.LeaderboardListApi.as_view(), name="api-leaderboards"),
    path(
        "leaderboards/<slug:benchmark>",
        leaderboard_apis.LeaderboardDetailApi.as_view(),
        name="api-leaderboard",
    ),
]
