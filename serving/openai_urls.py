"""The OpenAI-compatible API, mounted at /v1/ before the project's catch-all."""

from django.urls import path, re_path

from serving import async_apis, batch_apis, openai_api

urlpatterns = [
    path(
        "chat/completions",
        async_apis.async_view(
            openai_api.ChatCompletionsApi, async_apis.chat_completions, openai=True
        ),
        name="openai-chat",
    ),
    path(
        "completions",
        async_apis.async_view(openai_api.CompletionsApi, async_apis.completions, openai=True),
        name="openai-completions",
    ),
    path("models", openai_api.ModelListApi.as_view(), name="openai-models"),
    path("models/<str:model>", openai_api.ModelDetailApi.as_view(), name="openai-model"),
    # Batch inference: files of requests, batches of them (serving/batches.py).
    path("files", batch_apis.FileListCreateApi.as_view(), name="openai-files"),
    path("files/<str:file_id>", batch_apis.FileDetailApi.as_view(), name="openai-file"),
    path(
        "files/<str:file_id>/content",
        batch_apis.FileContentApi.as_view(),
        name="openai-file-content",
    ),
    path("batches", batch_apis.BatchListCreateApi.as_view(), name="openai-batches"),
    path("batches/<str:batch_id>", batch_apis.BatchDetailApi.as_view(), name="openai-batch"),
    path(
        "batches/<str:batch_id>/cancel",
        batch_apis.BatchCancelApi.as_view(),
        name="openai-batch-cancel",
    ),
    re_path(r"", openai_api.openai_not_found),
]
