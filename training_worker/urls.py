from django.urls import path

from training_worker import apis

urlpatterns = [
    path("base_models", apis.BaseModelListApi.as_view(), name="api-base-models"),
    path("datasets", apis.DatasetListCreateApi.as_view(), name="api-datasets"),
    path("datasets/<uuid:dataset_id>", apis.DatasetDetailApi.as_view(), name="api-dataset"),
    path("fine_tuning/jobs", apis.JobListCreateApi.as_view(), name="api-jobs"),
    path("fine_tuning/jobs/<uuid:job_id>", apis.JobDetailApi.as_view(), name="api-job"),
    path("fine_tuning/jobs/<uuid:job_id>/cancel", apis.JobCancelApi.as_view()),
    path("fine_tuning/jobs/<uuid:job_id>/events", apis.JobEventsApi.as_view()),
    path("fine_tuning/jobs/<uuid:job_id>/checkpoints", apis.JobCheckpointsApi.as_view()),
    path("models", apis.ModelVersionListApi.as_view(), name="api-models"),
    path("models/<uuid:version_id>", apis.ModelVersionDetailApi.as_view(), name="api-model"),
    path("models/<uuid:version_id>/evaluation", apis.ModelVersionEvaluationApi.as_view()),
    path("models/<uuid:version_id>/card", apis.ModelVersionCardApi.as_view()),
]
