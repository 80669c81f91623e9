"""The OpenAI-compatible API, mounted at /v1/ before the project's catch-all."""

from django.urls import path, re_path

from serving import openai_api

urlpatterns = [
    path("chat/completions", openai_api.ChatCompletionsApi.as_view(), name="openai-chat"),
    path("completions", openai_api.CompletionsApi.as_view(), name="openai-completions"),
    path("models", openai_api.ModelListApi.as_view(), name="openai-models"),
    path("models/<str:model>", openai_api.ModelDetailApi.as_view(), name="openai-model"),
    re_path(r"", openai_api.openai_not_found),
]
