"""Batch inference in OpenAI's shape: input files, batches, cancel, and the sweep.

A buyer uploads a JSONL of requests (`POST /v1/files`, purpose `batch`), each line
`{"custom_id", "method": "POST", "url", "body"}` whose url is `/v1/chat/completions`,
`/v1/completions` or `/api/v1/models/{listing}/predict`; the file is checked line by line
before it is stored (422 naming every bad line) and never interpreted beyond JSON. A
batch (`POST /v1/batches`) runs it on the inference workers at low priority
(serving.batch_runner: licence, quota and spend cap per row, each row billed at its
offer's batch price exactly once) and ends with an output file of answers and an error
file of refusals, in input order. Only the owner sees their files and batches (404 for
anyone else).

Services and selectors here run in web processes; they import no engine.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import ApiKey, User
from marketplace.celery import send_after_commit
from marketplace.errors import InvalidInputError, PayloadTooLargeError
from serving.errors import (
    BatchFileInvalid,
    BatchFileNotFound,
    BatchNotCancellable,
    BatchNotFound,
)
from serving.models import (
    RUNNABLE_BATCH_STATUSES,
    Batch,
    BatchFile,
    BatchStatus,
    FilePurpose,
)
from training_worker import artifacts, upload_checks

BATCH_TASK = "serving.tasks.batch_run"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PREDICT = "/api/v1/models/{listing}/predict"
ENDPOINTS = (CHAT, COMPLETIONS, PREDICT)
PREDICT_URL = re.compile(r"^/api/v1/models/(?P<listing>[^/?#\s]+)/predict$")
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_CUSTOM_ID_CHARS = 512
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512
MAX_REPORTED_LINES = 20  # a file with more bad lines names the first ones
MULTIPART_OVERHEAD_BYTES = 64 * 1024
READ_CHUNK = 1024 * 1024


# --- the request lines --------------------------------------------------------------------


@dataclass(frozen=True)
class RequestLine:
    """One checked line of an input file (`line` is its 1-based number in the file)."""

    line: int
    custom_id: str
    url: str
    body: dict

    @property
    def endpoint(self) -> str:
        return endpoint_of(self.url) or ""

    @property
    def listing(self) -> str:
        """The listing a predict line names in its url ("" for the /v1 endpoints)."""
        match = PREDICT_URL.match(self.url)
        return match["listing"] if match else ""


def endpoint_of(url: str) -> str | None:
    """The endpoint a line's url calls, or None when it calls none a batch may."""
    if url in (CHAT, COMPLETIONS):
        return url
    return PREDICT if PREDICT_URL.match(url) else None


def file_lines(handle) -> Iterator[tuple[int, bytes]]:
    """(1-based number, bytes) of each line of a binary file, read in chunks; blank
    lines are skipped but counted, so numbers are those an editor shows."""
    number, pending = 0, b""
    for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            if raw.strip():
                yield number, raw
    if pending.strip():
        yield number + 1, pending


def parse_request_line(number: int, raw: bytes) -> RequestLine:
    """A line as a request, or ValueError saying what is wrong with it. JSON only."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("Not UTF-8 text.") from None
    except (ValueError, RecursionError):
        raise ValueError("Not a JSON object.") from None
    if not isinstance(data, dict):
        raise ValueError("Not a JSON object.")
    custom_id, url, body = data.get("custom_id"), data.get("url"), data.get("body")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        raise ValueError(f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters.")
    if data.get("method") != "POST":
        raise ValueError('method must be "POST".')
    if not isinstance(url, str) or endpoint_of(url) is None:
        raise ValueError(f"url must be {CHAT}, {COMPLETIONS} or /api/v1/models/<listing>/predict.")
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object.")
    return RequestLine(line=number, custom_id=custom_id, url=url, body=body)


@dataclass(frozen=True)
class CheckedFile:
    request_count: int
    endpoints: list[str]
    sha256: str
    size_bytes: int


def _check_input(handle) -> CheckedFile:
    """Read an upload once: every line must be a request, custom_ids unique, at most
    BATCH_MAX_REQUESTS of them. Raises BatchFileInvalid naming the bad lines."""
    digest, size = hashlib.sha256(), 0

    def hashed():
        nonlocal size
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    chunks = hashed()
    problems: dict[str, list[str]] = {}
    bad_lines, count, seen, endpoints = 0, 0, set(), set()
    for number, raw in file_lines(_ChunkReader(chunks)):
        count += 1
        try:
            request = parse_request_line(number, raw)
            if request.custom_id in seen:
                raise ValueError(f"custom_id {request.custom_id[:80]!r} is used twice.")
        except ValueError as exc:
            bad_lines += 1
            if len(problems) < MAX_REPORTED_LINES:
                problems[f"line {number}"] = [str(exc)]
            continue
        seen.add(request.custom_id)
        endpoints.add(request.endpoint)
    if bad_lines:
        first = "; ".join(f"{name}: {errs[0]}" for name, errs in list(problems.items())[:3])
        raise BatchFileInvalid(
            f"{bad_lines} line{'s' if bad_lines > 1 else ''} of the file "
            f"{'are' if bad_lines > 1 else 'is'} not a batch request ({first}).",
            fields=problems,
        )
    if count == 0:
        raise BatchFileInvalid("The file holds no requests.", fields={"file": ["Empty."]})
    if count > settings.BATCH_MAX_REQUESTS:
        raise BatchFileInvalid(
            f"The file holds {count:,} requests; a batch takes at most "
            f"{settings.BATCH_MAX_REQUESTS:,}.",
            code="too_many_requests",
            fields={"file": [f"At most {settings.BATCH_MAX_REQUESTS:,} requests."]},
        )
    return CheckedFile(count, sorted(endpoints), digest.hexdigest(), size)


class _ChunkReader:
    """`read()` over a chunk iterator (file_lines reads through it)."""

    def __init__(self, chunks):
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")


# --- files --------------------------------------------------------------------------------


def batch_file_check_size(*, declared_bytes: int) -> None:
    """Refuse an upload by its declared size, before its body is read (413)."""
    limit = settings.BATCH_MAX_UPLOAD_BYTES
    if declared_bytes > limit + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(declared_bytes, limit)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file is {size:,} bytes; the limit is {limit:,} bytes.",
        code="file_too_large",
        fields={"file": [f"At most {limit:,} bytes."]},
    )


def batch_file_upload(*, owner: User, file: UploadedFile, purpose: str) -> BatchFile:
    """Check an input file line by line and store it (`batches/<file id>/input.jsonl`: the
    client's filename is only displayed). Raises InvalidInputError (422) for a purpose
    other than `batch`, PayloadTooLargeError (413) over BATCH_MAX_UPLOAD_BYTES,
    BatchFileInvalid (422) naming each bad line."""
    if purpose != FilePurpose.BATCH:
        raise InvalidInputError(
            'Only files with purpose "batch" are accepted.',
            fields={"purpose": ['"batch".']},
        )
    limit = settings.BATCH_MAX_UPLOAD_BYTES
    if file.size is not None and file.size > limit:
        raise _too_large(file.size, limit)
    file.seek(0)
    checked = _check_input(file)
    if checked.size_bytes > limit:
        raise _too_large(checked.size_bytes, limit)
    file.seek(0)
    row = BatchFile(
        owner=owner,
        purpose=FilePurpose.BATCH,
        filename=upload_checks.display_filename(file.name),
        size_bytes=checked.size_bytes,
        sha256=checked.sha256,
        request_count=checked.request_count,
        endpoints=checked.endpoints,
    )
    row.storage_path = default_storage.save(f"batches/{row.id}/input.jsonl", file)
    try:
        row.save()
    except Exception:
        artifacts.delete_quietly(row.storage_path)  # no orphan file without its row
        raise
    return row


def batch_file_list(*, owner: User, purpose: str = "") -> QuerySet[BatchFile]:
    files = BatchFile.objects.filter(owner=owner)
    return files.filter(purpose=purpose) if purpose else files


def batch_file_get(*, owner: User, file_id: str) -> BatchFile:
    """One of the owner's files; BatchFileNotFound (404) for any other id."""
    found = BatchFile.objects.filter(owner=owner, pk=str(file_id)).first()
    if found is None:
        raise BatchFileNotFound(f"No file {str(file_id)[:80]} among yours.")
    return found


def batch_file_open(*, owner: User, file_id: str):
    """(the file's row, its bytes opened for reading from storage)."""
    found = batch_file_get(owner=owner, file_id=file_id)
    return found, default_storage.open(found.storage_path, "rb")


# --- batches ------------------------------------------------------------------------------


def _checked_metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    ok = isinstance(metadata, dict) and len(metadata) <= MAX_METADATA_KEYS
    ok = ok and all(
        isinstance(k, str) and len(k) <= MAX_METADATA_KEY_CHARS
        and isinstance(v, str) and len(v) <= MAX_METADATA_VALUE_CHARS
        for k, v in metadata.items()
    )  # fmt: skip
    if not ok:
        raise InvalidInputError(
            f"metadata holds at most {MAX_METADATA_KEYS} string values of up to "
            f"{MAX_METADATA_VALUE_CHARS} characters, under keys of up to "
            f"{MAX_METADATA_KEY_CHARS}.",
            fields={"metadata": ["At most 16 string pairs."]},
        )
    return dict(metadata)


def batch_create(
    *,
    owner: User,
    api_key: ApiKey | None,
    input_file_id: str,
    endpoint: str,
    completion_window: str = "24h",
    metadata: dict | None = None,
) -> Batch:
    """A batch over one of the owner's input files, sent to the inference workers after
    commit. Raises BatchFileNotFound (404), InvalidInputError (422) for an endpoint the
    file's lines do not all call, another completion window or bad metadata."""
    if endpoint not in ENDPOINTS:
        raise InvalidInputError(
            f"endpoint must be one of {', '.join(ENDPOINTS)}.",
            fields={"endpoint": [f"One of {', '.join(ENDPOINTS)}."]},
        )
    window = COMPLETION_WINDOWS.get(completion_window)
    if window is None:
        raise InvalidInputError(
            'completion_window must be "24h".', fields={"completion_window": ['"24h".']}
        )
    metadata = _checked_metadata(metadata)
    source = batch_file_get(owner=owner, file_id=input_file_id)
    if source.purpose != FilePurpose.BATCH:
        raise InvalidInputError(
            "This file is an output file, not a batch input.",
            fields={"input_file_id": ['A file uploaded with purpose "batch".']},
        )
    if source.endpoints != [endpoint]:
        raise InvalidInputError(
            f"Every line of the file must call {endpoint}; it calls {', '.join(source.endpoints)}.",
            fields={"endpoint": [f"The file's lines call {', '.join(source.endpoints)}."]},
        )
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            owner=owner,
            api_key=api_key,
            input_file=source,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            request_total=source.request_count,
            created_at=now,
            expires_at=now + window,
            sent_at=now,
        )
        send_after_commit(BATCH_TASK, batch.id)
    return batch


def batch_list(*, owner: User) -> QuerySet[Batch]:
    return Batch.objects.filter(owner=owner).select_related("input_file")


def batch_get(*, owner: User, batch_id: str) -> Batch:
    """One of the owner's batches; BatchNotFound (404) for any other id."""
    found = Batch.objects.filter(owner=owner, pk=str(batch_id)).first()
    if found is None:
        raise BatchNotFound(f"No batch {str(batch_id)[:80]} among yours.")
    return found


def batch_cancel(*, owner: User, batch_id: str) -> Batch:
    """Stop a batch: one no worker took yet is cancelled at once; a running one turns
    `cancelling`, and its worker stops within a second, cancels the rows in flight (not
    billed) and writes the answers it has (`cancelled`). Idempotent while cancelling.
    Raises BatchNotFound (404), BatchNotCancellable (409) once it ended or is finalizing."""
    now = timezone.now()
    with transaction.atomic():
        batch = batch_get(owner=owner, batch_id=batch_id)
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status == BatchStatus.CANCELLING:
            return batch
        if batch.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            raise BatchNotCancellable(f"This batch is {batch.status}; it cannot be cancelled.")
        batch.cancelling_at = now
        if batch.status == BatchStatus.VALIDATING and not batch.lease_owner:
            batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
        else:
            batch.status, batch.sent_at = BatchStatus.CANCELLING, now
            send_after_commit(BATCH_TASK, batch.id)  # finalized even between slices
        batch.save(update_fields=["status", "cancelling_at", "cancelled_at", "sent_at"])
    return batch


def batches_resume_stalled(*, now: datetime | None = None) -> int:
    """The sweep: send again each unfinished batch that no worker holds (its worker
    died, or its message was lost) and that was not sent within a lease's length; the
    worker that takes it resumes at its first row without an answer. Returns how many."""
    now = now or timezone.now()
    quiet = now - timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    stalled = (
        Batch.objects.filter(status__in=RUNNABLE_BATCH_STATUSES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .filter(Q(sent_at__isnull=True) | Q(sent_at__lt=quiet))
        .values_list("pk", flat=True)
    )
    sent = 0
    for batch_id in list(stalled[:500]):
        with transaction.atomic():
            if (
                Batch.objects.filter(pk=batch_id)
                .filter(Q(sent_at__isnull=True) | Q(sent_at__lt=quiet))
                .update(sent_at=now)
            ):
                send_after_commit(BATCH_TASK, batch_id)
                sent += 1
    return sent
