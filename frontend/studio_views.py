"""The expert's studio in the portal: datasets, jobs with live progress, model versions."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from frontend.charts import comparison_bars
from frontend.views import not_found
from marketplace.errors import ApplicationError
from marketplace.middleware import checks_upload_size
from training_worker import selectors as studio
from training_worker import services as studio_services
from training_worker.models import DatasetStatus

HYPERPARAMETER_FIELDS = {
    "n_epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "lora_r": int,
    "lora_alpha": int,
    "lora_dropout": float,
    "max_seq_length": int,
}


@login_required
def studio_home(request):
    user = request.user
    datasets = list(studio.dataset_list(owner=user))  # one query for both uses below
    return render(
        request,
        "frontend/studio.html",
        {
            "datasets": datasets,
            "ready_datasets": [d for d in datasets if d.status == DatasetStatus.READY],
            "jobs": studio.job_list(owner=user)[:50],
            "versions": studio.model_version_list(owner=user)[:50],
            "base_models": studio.base_model_list(),
            "max_upload_mb": settings.DATASET_MAX_UPLOAD_BYTES // (1024 * 1024),
            "hyperparameter_fields": list(HYPERPARAMETER_FIELDS),
        },
    )


@checks_upload_size(studio_services.dataset_upload_check_size)
@login_required
@require_POST
def dataset_upload(request):
    try:  # before request.FILES: an oversized body is refused unread
        studio_services.dataset_upload_check_size(
            declared_bytes=int(request.META.get("CONTENT_LENGTH") or 0)
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("studio")
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a file to upload.")
        return redirect("studio")
    try:
        dataset = studio_services.dataset_upload(
            owner=request.user, file=upload, name=request.POST.get("name", "")
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("studio")
    messages.success(request, f"Uploaded {dataset.name}; validation is running.")
    return redirect("studio-dataset", dataset_id=dataset.pk)


@login_required
def dataset_detail(request, dataset_id):
    try:
        dataset = studio.dataset_get(owner=request.user, dataset_id=dataset_id)
    except ApplicationError as exc:
        return not_found(request, exc)
    return render(request, "frontend/dataset.html", {"dataset": dataset})


@login_required
@require_POST
def job_create(request):
    hyperparameters = {}
    for name, cast in HYPERPARAMETER_FIELDS.items():
        raw = request.POST.get(name, "").strip()
        if raw:
            try:
                hyperparameters[name] = cast(raw)
            except ValueError:
                messages.error(request, f"{name} must be a number.")
                return redirect("studio")
    try:
        job = studio_services.job_create(
            owner=request.user,
            base_model=request.POST.get("base_model", ""),
            dataset_id=request.POST.get("dataset", ""),
            hyperparameters=hyperparameters,
            suffix=request.POST.get("suffix", "").strip().lower(),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("studio")
    except ValueError:
        messages.error(request, "Choose one of your datasets.")
        return redirect("studio")
    return redirect("studio-job", job_id=job.pk)


@login_required
def job_detail(request, job_id):
    try:
        job = studio.job_get(owner=request.user, job_id=job_id)
    except ApplicationError as exc:
        return not_found(request, exc)
    return render(request, "frontend/job.html", {"job": job})


@login_required
@require_POST
def job_cancel(request, job_id):
    try:
        studio_services.job_cancel(owner=request.user, job_id=job_id)
        messages.success(request, "Cancellation requested.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("studio-job", job_id=job_id)


@login_required
def model_version_detail(request, version_id):
    try:
        version = studio.model_version_get(owner=request.user, version_id=version_id)
    except ApplicationError as exc:
        return not_found(request, exc)
    evaluation = version.evaluation
    return render(
        request,
        "frontend/model_version.html",
        {"version": version, "evaluation": evaluation, "comparison": comparison_bars(evaluation)},
    )
