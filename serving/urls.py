"""Serving under /api/v1/ (the slug route cannot meet training_worker's models/<uuid>/…:
no route of theirs ends in /predict)."""

from django.urls import path

from serving import apis

urlpatterns = [
    path("models/<str:listing>/predict", apis.PredictApi.as_view(), name="api-predict"),
]
