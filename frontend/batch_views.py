"""Batch inference in the portal: the buyer's batches with their progress, their files,
and a cancel button. Thin views over serving.batches, which the /v1 API uses too."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from frontend.views import not_found
from marketplace.errors import ApplicationError
from serving import batches as batch_service
from serving.models import RUNNABLE_BATCH_STATUSES, BatchStatus

PAGE_SIZE = 50
REFRESH_SECONDS = 10


@login_required
@require_GET
def batch_list(request):
    """Your last batches, newest first: status, progress (answered rows of all, failed
    ones apart), the output and error files; refreshes itself while one runs."""
    rows = []
    for batch in batch_service.batch_list(owner=request.user)[:PAGE_SIZE]:
        answered = batch.request_completed + batch.request_failed
        total = batch.request_total
        rows.append(
            {
                "batch": batch,
                "answered": answered,
                "percent": round(100 * answered / total) if total else 0,
                "running": batch.status in RUNNABLE_BATCH_STATUSES,
                "can_cancel": batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS),
            }
        )
    running = any(row["running"] for row in rows)
    return render(
        request,
        "frontend/batches.html",
        {
            "rows": rows,
            "refresh_seconds": REFRESH_SECONDS if running else None,
            "site": request.build_absolute_uri("/").rstrip("/"),
        },
    )


@login_required
@require_POST
def batch_cancel(request, batch_id):
    try:
        batch = batch_service.batch_cancel(owner=request.user, batch_id=batch_id)
    except ApplicationError as exc:
        if exc.status == 404:
            return not_found(request, exc)
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Batch {batch.id} is {batch.status}.")
    return redirect("batches")
