"""The expert's studio in the portal: datasets, jobs with live progress, model versions."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from frontend.charts import comparison_chart, confusion_heatmap
from frontend.forms import FineTuneForm
from frontend.views import not_found
from marketplace.errors import ApplicationError
from marketplace.middleware import checks_upload_size
from training_worker import selectors as studio
from training_worker import services as studio_services
from training_worker.models import DatasetStatus


def _ready(datasets: list) -> list:
    return [d for d in datasets if d.status == DatasetStatus.READY]


def _fine_tune_form(datasets: list, data=None) -> FineTuneForm:
    return FineTuneForm(data, datasets=_ready(datasets), base_models=list(studio.base_model_list()))


def _studio_page(request, *, datasets: list, job_form: FineTuneForm, status: int = 200):
    user = request.user
    return render(
        request,
        "frontend/studio.html",
        {
            "datasets": datasets,
            "job_form": job_form,
            "jobs": studio.job_list(owner=user)[:50],
            "versions": studio.model_version_list(owner=user)[:50],
            "max_upload_mb": settings.DATASET_MAX_UPLOAD_BYTES // (1024 * 1024),
        },
        status=status,
    )


@login_required
def studio_home(request):
    datasets = list(studio.dataset_list(owner=request.user))  # one query for the page
    return _studio_page(request, datasets=datasets, job_form=_fine_tune_form(datasets))


@checks_upload_size(studio_services.dataset_upload_check_size)
@login_required
@require_POST
def dataset_upload(request):
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
    """Start a job, or show the studio again with the form's errors (422)."""
    datasets = list(studio.dataset_list(owner=request.user))
    form = _fine_tune_form(datasets, request.POST)
    if form.is_valid():
        try:
            job = studio_services.job_create(owner=request.user, **form.job_arguments())
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            return redirect("studio-job", job_id=job.pk)
    return _studio_page(request, datasets=datasets, job_form=form, status=422)


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
    report = studio.model_version_evaluation(version=version)
    evaluation = report.as_public_dict() if report else None
    return render(
        request,
        "frontend/model_version.html",
        {
            "version": version,
            "evaluation": evaluation,
            "chart": comparison_chart(evaluation),
            "heatmap": confusion_heatmap(evaluation),
            "base_provenance": studio.base_model_provenance(base_model=version.base_model),
        },
    )
