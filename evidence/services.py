"""Private evaluations: a buyer's rows scored by 1-5 listings side by side (every write).

Privacy is the point. The rows live in storage under the never-served prefix only while
they are scored (or ``PRIVATE_EVALUATION_KEEP_DAYS`` when the buyer keeps them for a re-run;
deletable at any time); they never enter training, logs or a metric's labels. The result
belongs to the buyer alone: the listing's expert learns how many evaluations named the
listing each month, nothing else (evidence.selectors.private_evaluation_counts).

Who pays: each listing scored is free within the buyer's daily allowance
(``PRIVATE_EVALUATION_FREE_ROWS_PER_DAY`` rows scored, counted per listing) when its expert
leaves free evaluation on; otherwise each row is a call on the buyer's calling licence to
that listing, at its price, with its quota and spend cap, written to the ledger with the
result (a failed evaluation is not billed). An expert can turn free evaluation off, never
the paid kind: a buyer who may call a model may always score it.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import timedelta
from pathlib import PurePosixPath

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from billing.errors import LicenceRequired
from billing.models import UsageStatus
from billing.selectors import licence_for_call
from billing.services import FinishedCall, usage_record_finished
from evidence import errors
from evidence.models import (
    ENDED_EVALUATION_STATUSES,
    CandidateCharge,
    EvaluationStatus,
    PrivateEvaluation,
    PrivateEvaluationCandidate,
)
from listings.models import ListingKind, ListingVersion
from listings.selectors import listing_list_published
from marketplace.celery import send_after_commit
from marketplace.errors import ApplicationError, PayloadTooLargeError
from marketplace.storage import SEALED_PREFIX
from training_worker import artifacts, upload_checks
from training_worker.ml.dataset_validation import ValidationLimits, validate_dataset
from training_worker.models import BaseModel
from training_worker.services import ALLOWED_EXTENSIONS

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 5
# Dataset rules that exist for the training and sealed split (a label needs a row on each
# side; a classifier needs two labels to learn): rows that are only scored may break them.
TRAINING_ONLY_RULES = {"label_too_rare", "too_few_labels"}
RUN_TASK = "evidence.tasks.run_private_evaluation"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
QUEUED_RESEND_AFTER = timedelta(minutes=10)
RUNNING_STALLED_AFTER = timedelta(hours=2)


def private_evaluation_check_size(*, declared_bytes: int) -> None:
    """Refuse an upload by its declared size, before its body is read (413)."""
    limit = settings.PRIVATE_EVALUATION_MAX_UPLOAD_BYTES
    if declared_bytes > limit + MULTIPART_OVERHEAD_BYTES:
        raise PayloadTooLargeError(
            f"The upload is {declared_bytes:,} bytes; the limit is {limit:,} bytes.",
            code="file_too_large",
            fields={"file": [f"At most {limit:,} bytes."]},
        )


def _rows_name(evaluation_id: str) -> str:
    return f"{SEALED_PREFIX}private-evaluations/{evaluation_id}/rows.jsonl"  # never served


def _candidates(slugs: list[str], owner: User) -> list:
    """The published listings named, in order: one task, models (not gardens), a live
    version each. Raises InvalidEvaluation naming the field."""
    cleaned = [str(slug).strip() for slug in slugs if str(slug).strip()]
    if not 1 <= len(cleaned) <= MAX_CANDIDATES:
        raise errors.InvalidEvaluation(
            f"Name 1 to {MAX_CANDIDATES} listings to score.",
            fields={"listings": [f"Between 1 and {MAX_CANDIDATES} listing slugs."]},
        )
    if len(set(cleaned)) != len(cleaned):
        raise errors.InvalidEvaluation(
            "A listing is named twice.", fields={"listings": ["Each listing once."]}
        )
    found = {
        listing.slug: listing
        for listing in listing_list_published()
        .filter(slug__in=cleaned)
        .select_related("live_version")
    }
    missing = [slug for slug in cleaned if slug not in found]
    if missing:
        raise errors.InvalidEvaluation(
            "No published listing is called " + ", ".join(missing) + ".",
            fields={"listings": [f"Not a published listing: {slug}." for slug in missing]},
        )
    listings = [found[slug] for slug in cleaned]
    gardens = [listing.slug for listing in listings if listing.kind == ListingKind.GARDEN]
    if gardens:
        raise errors.InvalidEvaluation(
            "Gardens route each row to one of their members, so they are not scored as one "
            "model: evaluate their members instead (" + ", ".join(gardens) + ").",
            fields={"listings": [f"{slug} is a garden." for slug in gardens]},
        )
    tasks = {listing.task for listing in listings}
    if len(tasks) > 1:
        raise errors.InvalidEvaluation(
            "The listings do different tasks (" + ", ".join(sorted(tasks)) + "): compare "
            "listings of one task on one set of rows.",
            fields={"listings": ["All of one task."]},
        )
    unserved = [listing.slug for listing in listings if listing.live_version is None]
    if unserved:
        raise errors.InvalidEvaluation(
            ", ".join(unserved) + " has no live version.",
            fields={"listings": [f"{slug} has no live version." for slug in unserved]},
        )
    return listings


def _rows(content: bytes, filename: str, task: str) -> tuple[list[dict], dict]:
    """The usable rows of the upload, checked as a dataset is (same formats, same rules)."""
    result = validate_dataset(
        content,
        filename=filename,
        task=task,
        limits=ValidationLimits(max_rows=settings.PRIVATE_EVALUATION_MAX_ROWS, min_rows=1),
    )
    # Rules that protect a training split do not apply to rows that are only scored.
    blocking = [
        issue
        for issue in result.report.get("errors", [])
        if issue.get("code") not in TRAINING_ONLY_RULES
    ]
    if blocking or not result.rows:
        problems = [issue["message"] for issue in blocking][:10]
        raise errors.EvaluationRowsInvalid(
            "These rows cannot be scored: " + (problems[0] if problems else "no usable rows."),
            fields={"file": problems or ["No usable rows."]},
        )
    if result.task != task:
        raise errors.EvaluationRowsInvalid(
            f"The rows are for {result.task}; the listings do {task}.",
            fields={"file": [f"Rows for {task} are needed."]},
        )
    rows = [{key: value for key, value in row.items() if key != "row"} for row in result.rows]
    return rows, result.report


def _label_maps(listings: list, labels: list[str], raw: dict | None) -> dict[str, dict]:
    """Each listing's map from its labels to the buyer's; every buyer label must be one a
    listing can answer (by name, or through the map), else the listing could never be
    right on those rows. Raises LabelsNotCovered / InvalidEvaluation naming the field."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise errors.InvalidEvaluation(
            "label_map is an object: {listing slug: {model label: your label}}.",
            fields={"label_map": ["An object keyed by listing slug."]},
        )
    unknown = sorted(set(raw) - {listing.slug for listing in listings})
    if unknown:
        raise errors.InvalidEvaluation(
            "label_map names listings that are not scored: " + ", ".join(unknown) + ".",
            fields={"label_map": [f"{slug} is not among the listings." for slug in unknown]},
        )
    maps: dict[str, dict] = {}
    for listing in listings:
        model_labels = list(listing.live_version.labels or [])
        mapping = raw.get(listing.slug) or {}
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise errors.InvalidEvaluation(
                f"label_map for {listing.slug} maps the model's labels to yours, as strings.",
                fields={"label_map": [f"{listing.slug}: {{model label: your label}}."]},
            )
        strangers = sorted(set(mapping) - set(model_labels))
        if strangers:
            raise errors.LabelsNotCovered(
                f"{listing.slug} has no label "
                + ", ".join(strangers)
                + "; its labels are "
                + ", ".join(model_labels)
                + ".",
                fields={
                    "label_map": [f"{listing.slug}: unknown model label {s}." for s in strangers]
                },
            )
        answerable = {mapping.get(label, label) for label in model_labels}
        uncovered = [label for label in labels if label not in answerable]
        if uncovered:
            example = json.dumps({listing.slug: {(model_labels or ["its label"])[0]: uncovered[0]}})
            raise errors.LabelsNotCovered(
                f"{listing.slug} cannot answer your label(s) " + ", ".join(uncovered) + ": its "
                "labels are "
                + ", ".join(model_labels)
                + f". Map them with label_map (e.g. {example}).",
                fields={"label_map": [f"{listing.slug}: no label answers {u}." for u in uncovered]},
            )
        maps[listing.slug] = {k: v for k, v in mapping.items() if k != v}
    return maps


def free_rows_used_today(*, owner: User, at=None) -> int:
    """Free rows scored for ``owner`` in the last 24 hours (per listing scored)."""
    since = (at or timezone.now()) - timedelta(hours=24)
    used = PrivateEvaluationCandidate.objects.filter(
        evaluation__owner=owner, charge=CandidateCharge.FREE, created_at__gte=since
    ).aggregate(rows=Sum("evaluation__row_count"))["rows"]
    return int(used or 0)


def _charges(owner: User, listings: list, rows: int) -> list[tuple[str, object]]:
    """(charge, licence id) per listing, in order: free while the allowance lasts and the
    expert allows it; else per call on the buyer's licence (its quota checked now, and
    again, atomically, when the result is written)."""
    used = free_rows_used_today(owner=owner)
    allowance = settings.PRIVATE_EVALUATION_FREE_ROWS_PER_DAY
    charges = []
    for listing in listings:
        if listing.owner_id == owner.pk:
            charges.append((CandidateCharge.FREE, None))  # an expert scoring their own model
            continue
        if listing.free_private_evaluation and used + rows <= allowance:
            used += rows
            charges.append((CandidateCharge.FREE, None))
            continue
        reason = (
            f"{listing.slug}'s expert does not offer free private evaluation"
            if not listing.free_private_evaluation
            else f"your free allowance ({allowance:,} rows scored a day) is used up"
        )
        try:
            check = licence_for_call(user=owner, listing_slug=listing.slug)
        except LicenceRequired as exc:
            raise errors.EvaluationNeedsLicence(
                f"{reason.capitalize()}: with a per-call licence or a trial of {listing.slug}, "
                f"each of your {rows:,} rows is billed as one call.",
                fields={"listings": [f"{listing.slug}: a calling licence is needed."]},
            ) from exc
        check.require_calls(rows)  # QuotaExceeded (429) now rather than after scoring
        charges.append((CandidateCharge.PER_CALL, check.licence_id))
    return charges


def private_evaluation_create(
    *,
    owner: User,
    file,
    listings: list[str],
    label_map: dict | None = None,
    keep_rows: bool = False,
) -> PrivateEvaluation:
    """Check the rows and the listings, store the rows under the never-served prefix and
    queue the scoring (inference queue, batch priority). Nothing is written when a check
    fails. Raises InvalidEvaluation, EvaluationRowsInvalid, LabelsNotCovered (422),
    EvaluationNeedsLicence (403), QuotaExceeded (429), PayloadTooLargeError (413)."""
    chosen = _candidates(list(listings or []), owner)
    task = chosen[0].task
    # The dataset upload's checks: its formats only, never unpacked, never binary.
    filename = upload_checks.display_filename(getattr(file, "name", "") or "rows.jsonl")
    extension = PurePosixPath(filename).suffix.lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise errors.EvaluationRowsInvalid(
            "Upload your rows as a .csv, .jsonl or .json file.",
            code="unsupported_file_type",
            fields={"file": [f"Unsupported extension {extension or '(none)'}."]},
        )
    content = file.read(settings.PRIVATE_EVALUATION_MAX_UPLOAD_BYTES + 1)
    if len(content) > settings.PRIVATE_EVALUATION_MAX_UPLOAD_BYTES:
        private_evaluation_check_size(declared_bytes=len(content) + MULTIPART_OVERHEAD_BYTES + 1)
    upload_checks.refuse_compressed_or_binary(content[: upload_checks.SNIFF_BYTES])
    rows, _report = _rows(content, filename, task)
    labels = sorted({row["label"] for row in rows}) if task == "text-classification" else []
    maps = _label_maps(chosen, labels, label_map) if labels else {}
    evaluation = PrivateEvaluation(
        owner=owner,
        task=task,
        filename=filename,
        row_count=len(rows),
        labels=labels,
        keep_rows=bool(keep_rows),
        progress_total=len(rows) * (len(chosen) + 2),
    )
    evaluation.rows_path = artifacts.write_jsonl(_rows_name(evaluation.id), rows)
    try:
        with transaction.atomic():
            # One buyer's evaluations are created one at a time, so two at once cannot
            # both take the last of the day's free allowance.
            User.objects.select_for_update().filter(pk=owner.pk).first()
            charges = _charges(owner, chosen, len(rows))
            evaluation.save(force_insert=True)
            PrivateEvaluationCandidate.objects.bulk_create(
                PrivateEvaluationCandidate(
                    evaluation=evaluation,
                    listing=listing,
                    version=listing.live_version,
                    position=position,
                    label_map=maps.get(listing.slug, {}),
                    charge=charge,
                    licence_id=licence_id,
                    created_at=evaluation.created_at,
                )
                for position, (listing, (charge, licence_id)) in enumerate(
                    zip(chosen, charges, strict=True)
                )
            )
            send_after_commit(RUN_TASK, evaluation.id)
    except BaseException:  # nothing half-written: the rows file goes with the refusal
        artifacts.delete_quietly(evaluation.rows_path)
        raise
    return evaluation


def private_evaluation_rerun(*, owner: User, evaluation_id: str) -> PrivateEvaluation:
    """Score the kept rows again with the same listings at their versions live now (a new
    evaluation; the old one stays). Raises EvaluationNotFound, EvaluationNotRerunnable."""
    from evidence.selectors import private_evaluation_get

    original = private_evaluation_get(owner=owner, evaluation_id=evaluation_id)
    if not original.keep_rows or not original.rows_path:
        raise errors.EvaluationNotRerunnable(
            "Its rows were not kept (or were deleted): upload them again to score them."
        )
    candidates = list(original.candidates.select_related("listing"))
    content = artifacts.read_bytes(original.rows_path)

    class _Upload:
        name = original.filename

        @staticmethod
        def read(limit: int) -> bytes:
            return content[:limit]

    again = private_evaluation_create(
        owner=owner,
        file=_Upload,
        listings=[c.listing.slug for c in candidates],
        label_map={c.listing.slug: c.label_map for c in candidates if c.label_map},
        keep_rows=True,
    )
    PrivateEvaluation.objects.filter(pk=again.pk).update(rerun_of=original)
    again.rerun_of = original
    return again


def private_evaluation_delete(*, owner: User, evaluation_id: str) -> None:
    """Delete the evaluation, its rows and its result now (a scoring in progress finds it
    gone and stops). Raises EvaluationNotFound."""
    from evidence.selectors import private_evaluation_get

    evaluation = private_evaluation_get(owner=owner, evaluation_id=evaluation_id)
    name = evaluation.rows_path
    evaluation.delete()
    if name:
        transaction.on_commit(lambda: artifacts.delete_quietly(name))


def private_evaluation_rows_delete(*, owner: User, evaluation_id: str) -> PrivateEvaluation:
    """Delete the kept rows now and keep the result. Raises EvaluationNotFound; 409 while
    they are being scored."""
    from evidence.selectors import private_evaluation_get

    evaluation = private_evaluation_get(owner=owner, evaluation_id=evaluation_id)
    if evaluation.status not in ENDED_EVALUATION_STATUSES:
        raise errors.EvaluationNotRerunnable(
            "The rows are being scored; delete the whole evaluation to stop it."
        )
    _rows_forget(evaluation)
    return evaluation


def _rows_forget(evaluation: PrivateEvaluation) -> None:
    name = evaluation.rows_path
    if not name:
        return
    PrivateEvaluation.objects.filter(pk=evaluation.pk).update(
        rows_path="", rows_deleted_at=timezone.now(), rows_expire_at=None
    )
    evaluation.rows_path, evaluation.rows_deleted_at = "", timezone.now()
    artifacts.delete_quietly(name)


# --- the worker's side -----------------------------------------------------------------


def _claim(evaluation_id: str) -> PrivateEvaluation | None:
    claimed = PrivateEvaluation.objects.filter(
        pk=evaluation_id, status=EvaluationStatus.QUEUED
    ).update(status=EvaluationStatus.RUNNING, started_at=timezone.now(), progress_done=0)
    if claimed != 1:
        return None
    return PrivateEvaluation.objects.get(pk=evaluation_id)


def private_evaluation_run(*, evaluation_id: str, engine=None) -> str:
    """Score a queued evaluation (the Celery task on an inference worker calls this):
    claimed by a conditional UPDATE, so it runs once; the per-call rows are billed in the
    transaction that stores the result; the rows are deleted at the end unless kept.
    Returns "succeeded", "failed", "skipped" (not queued) or "gone" (deleted meanwhile)."""
    from evidence import scoring

    evaluation = _claim(evaluation_id)
    if evaluation is None:
        return "skipped"
    candidates = list(evaluation.candidates.select_related("listing", "version"))
    total = evaluation.row_count * (len(candidates) + 2)

    def progress(done: int, _total: int) -> None:
        PrivateEvaluation.objects.filter(pk=evaluation_id).update(
            progress_done=min(done, total), progress_total=total
        )

    try:
        rows = artifacts.read_jsonl(evaluation.rows_path)
        contenders = [
            scoring.version_contender(
                c.version,
                key=f"listing:{c.listing.slug}",
                label=c.listing.title,
                label_map=c.label_map,
            )
            for c in candidates
        ]
        base = BaseModel.objects.filter(slug=contenders[0].base_model).first()
        contenders.append(
            scoring.generalist_contender(
                base_model=contenders[0].base_model,
                label=f"Generalist: {base.display_name if base else contenders[0].base_model}, "
                "no fine-tuning"
                + (
                    " (zero-shot by label names)"
                    if evaluation.task == "text-classification"
                    else ""
                ),
            )
        )
        result = scoring.score_rows(
            task=evaluation.task,
            rows=rows,
            contenders=contenders,
            engine=engine,
            progress=progress,
            seed=0,
        )
    except Exception as exc:  # the buyer reads why; nothing is billed
        logger.exception("private evaluation %s failed", evaluation_id)
        return _fail(evaluation, "scoring_failed", f"Scoring failed: {type(exc).__name__}.")
    answered = {c["key"]: c for c in result["contenders"]}
    for candidate in candidates:
        answered[f"listing:{candidate.listing.slug}"].update(
            listing=candidate.listing.slug,
            version_id=str(candidate.version_id),
            charge=candidate.charge,
        )
    try:
        with transaction.atomic():
            locked = PrivateEvaluation.objects.select_for_update().filter(pk=evaluation_id).first()
            if locked is None:
                return "gone"
            for candidate in candidates:
                if candidate.charge == CandidateCharge.PER_CALL:
                    _bill(evaluation, candidate, answered[f"listing:{candidate.listing.slug}"])
            locked.status = EvaluationStatus.SUCCEEDED
            locked.result = result
            locked.finished_at = timezone.now()
            locked.progress_done = locked.progress_total = total
            locked.save(
                update_fields=["status", "result", "finished_at", "progress_done", "progress_total"]
            )
    except ApplicationError as exc:  # the quota or the licence changed while it ran
        return _fail(evaluation, exc.code, exc.message)
    _rows_after(evaluation)
    return "succeeded"


def _bill(evaluation: PrivateEvaluation, candidate: PrivateEvaluationCandidate, figures: dict):
    """The rows a listing scored, as calls on the buyer's licence (settled, idempotent)."""
    units = int(figures.get("rows_scored") or 0)
    if units <= 0 or candidate.licence_id is None:
        return
    listing_version = (
        ListingVersion.objects.filter(listing=candidate.listing, model_version=candidate.version)
        .values_list("pk", flat=True)
        .first()
    )
    latency = (figures.get("latency_ms_per_row") or {}).get("mean")
    outcome = usage_record_finished(
        licence_id=candidate.licence_id,
        calls=[
            FinishedCall(
                idempotency_key=f"peval:{evaluation.pk}:{candidate.listing.slug}",
                units=units,
                status=UsageStatus.OK,
                listing_version_id=listing_version,
                latency_ms=None if latency is None else math.ceil(latency),
            )
        ],
    )
    if outcome and outcome[0] is not None:
        raise outcome[0]


def _fail(evaluation: PrivateEvaluation, code: str, message: str) -> str:
    changed = PrivateEvaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.FAILED,
        error_code=code[:60],
        error_message=message[:500],
        finished_at=timezone.now(),
    )
    if changed:
        _rows_after(evaluation)
    return "failed" if changed else "gone"


def _rows_after(evaluation: PrivateEvaluation) -> None:
    """Scoring ended: the rows go now, or in PRIVATE_EVALUATION_KEEP_DAYS when kept."""
    if evaluation.keep_rows:
        PrivateEvaluation.objects.filter(pk=evaluation.pk).update(
            rows_expire_at=timezone.now() + timedelta(days=settings.PRIVATE_EVALUATION_KEEP_DAYS)
        )
        return
    _rows_forget(evaluation)


def private_evaluations_sweep(*, now=None) -> dict[str, int]:
    """Kept rows past their 30 days are deleted; a queued evaluation whose task was lost is
    sent again; one that has run for hours without ending (its worker died) fails."""
    now = now or timezone.now()
    counts = {"rows_deleted": 0, "resent": 0, "stalled": 0}
    for evaluation in PrivateEvaluation.objects.filter(
        rows_expire_at__lte=now, rows_deleted_at__isnull=True
    ).exclude(rows_path=""):
        _rows_forget(evaluation)
        counts["rows_deleted"] += 1
    for evaluation_id in PrivateEvaluation.objects.filter(
        status=EvaluationStatus.QUEUED, created_at__lte=now - QUEUED_RESEND_AFTER
    ).values_list("pk", flat=True)[:100]:
        send_after_commit(RUN_TASK, evaluation_id)
        counts["resent"] += 1
    for evaluation in PrivateEvaluation.objects.filter(
        status=EvaluationStatus.RUNNING, started_at__lte=now - RUNNING_STALLED_AFTER
    ):
        _fail(evaluation, "stalled", "Scoring stopped (its worker was lost). Run it again.")
        counts["stalled"] += 1
    # Ended evaluations whose unkept rows a crash left behind.
    for evaluation in PrivateEvaluation.objects.filter(
        status__in=ENDED_EVALUATION_STATUSES, keep_rows=False
    ).exclude(rows_path=""):
        _rows_forget(evaluation)
        counts["rows_deleted"] += 1
    return counts
