"""Serving under /api/v1/ (the slug route cannot meet training_worker's models/<uuid>/…:
no route of theirs ends in /predict)."""

from django.urls import path

from serving import apis, async_apis

urlpatterns = [
    path(
        "models/niche/auto/predict",
        async_apis.async_view(apis.AutoPredictApi, async_apis.auto_predict, openai=False),
        name="api-auto-predict",
    ),
    path(
        "route",
        async_apis.async_view(apis.RouteApi, async_apis.route, openai=False),
        name="api-route",
    ),
    path(
        "models/<str:listing>/predict",
        async_apis.async_view(apis.PredictApi, async_apis.predict, openai=False),
        name="api-predict",
    ),
]
