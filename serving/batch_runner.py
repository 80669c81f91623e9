"""The inference worker's side of a batch: its rows through this process's engine.

`batch_work` runs in the Celery task `serving.tasks.batch_run` on an inference worker, for
one slice (BATCH_SLICE_SECONDS) at a time:

1. Claim the batch's lease (a conditional UPDATE that must change one row: no two workers
   work on one batch); renew it every third of BATCH_LEASE_SECONDS, and stop at once when
   it was taken over.
2. Read the input file from storage and skip every line that already has an answer
   (BatchLine): a batch whose worker died resumes at its first unanswered row.
3. Check each row as the interactive call would, in the same order and with the same
   codes (the gateway's own validators, the licence check, read once per round of rows
   handed to the engine, the quota and the buyer's spend cap, counting the rows still in
   flight), and hand it to the engine with priority
   "batch": up to BATCH_ROWS_IN_FLIGHT rows wait in the engine at once, enough to fill its
   largest batches, and its scheduler serves them only with the capacity interactive
   calls leave free. A row the engine sends back unrun (`overloaded`: its queue is full;
   `deadline_exceeded`: interactive calls kept the room) goes again, after retry_after.
4. Write the answers that came back together, in ONE transaction with their ledger rows
   (billing.services.usage_record_finished: idempotency key `batch:<batch id>:<line>`,
   billed at the offer's batch price, settled at once, quota and spend cap taken under
   the period's lock) and the batch's counters. A line is unique per batch: should another
   worker have answered one of these rows (this one lost its lease), the whole write rolls
   back and this worker stops, so no row is ever billed or written twice. A row refused,
   or failed by the engine, gets an error line with the code the interactive call would
   get; a failure is not billed.
5. When every row has an answer (or the batch was cancelled, or its window passed), write
   the output and error files in input order and end the batch.

A row is billed only when its answer is written: a crash before that loses the answer and
the row runs again; nothing is ever half billed, and no row sits unsettled.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Case, F, PositiveIntegerField, Q, When
from django.utils import timezone

from accounts.models import ApiKey, User
from billing.models import UsageStatus
from billing.selectors import licence_batch_price_percent
from billing.services import FinishedCall, usage_record_finished
from marketplace.errors import ApplicationError, error_body
from serving import gateway, protocol
from serving.apis import predict_body
from serving.batches import CHAT, COMPLETIONS, PREDICT, RequestLine, file_lines, parse_request_line
from serving.errors import EngineFailed, EngineTimeout, EngineUnavailable, InvalidInferenceInput
from serving.models import (
    ENDED_BATCH_STATUSES,
    RUNNABLE_BATCH_STATUSES,
    Batch,
    BatchFile,
    BatchLine,
    BatchStatus,
    FilePurpose,
)
from serving.openai_api import chat_body, completion_body, openai_error
from serving.protocol import PRIORITY_BATCH, ErrorCode, InferenceError, InferenceRequest
from training_worker import artifacts

logger = logging.getLogger(__name__)

COMMIT_EVERY = 64  # refused rows written together (answered rows: as they come back)
MAX_ROW_ATTEMPTS = 3  # a row whose deadline keeps passing in the engine then fails (504)

# The engine's error codes → the typed errors the interactive call would raise.
_ENGINE_ERRORS: dict[str, type[ApplicationError]] = {
    ErrorCode.INPUT_TOO_LONG: InvalidInferenceInput,
    ErrorCode.INVALID_REQUEST: InvalidInferenceInput,
    ErrorCode.DEADLINE_EXCEEDED: EngineTimeout,
    ErrorCode.ADAPTER_UNAVAILABLE: EngineUnavailable,
    ErrorCode.BASE_UNAVAILABLE: EngineUnavailable,
}


class LeaseLost(Exception):
    """Another worker holds the batch now (it answered a row this one was writing)."""


class CallerGone(ApplicationError):
    """The batch's key was revoked or its owner suspended: its rows stop (401)."""

    status = 401
    default_code = "authentication_failed"


# --- rows -----------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A row checked and on its way to the engine."""

    row: RequestLine
    request_id: str
    target: gateway.Target
    units: int
    request: dict
    started: float
    attempts: int = 1

    @property
    def licence_id(self):
        return self.target.check.licence_id

    def again(self) -> Prepared:
        """The same row sent again (a new request id and deadline: the last one ended)."""
        self.request_id = uuid.uuid4().hex
        self.request = self.request | {
            "request_id": self.request_id,
            "deadline": time.time() + settings.BATCH_ROW_TIMEOUT_SECONDS,
        }
        self.attempts += 1
        return self


@dataclass(frozen=True)
class Answer:
    """What a row's line holds: the endpoint's answer (or its error) and its status."""

    row: RequestLine
    request_id: str
    status_code: int
    body: dict

    @property
    def succeeded(self) -> bool:
        return self.status_code == 200


def _refusal(row: RequestLine, request_id: str, exc: ApplicationError) -> Answer:
    """The error the interactive call answers, in its endpoint's shape."""
    if row.endpoint == PREDICT:
        body = error_body(exc.code, exc.message, exc.fields)
    else:
        body = openai_error(exc.status, exc.code, exc.message, exc.fields)
    return Answer(row=row, request_id=request_id, status_code=exc.status, body=body)


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInferenceInput(
            "Name the model: <listing-slug>[@<version>].", fields={"model": ["Required."]}
        )
    return model


def _openai_parameters(body: dict) -> protocol.GenerationParameters:
    """OpenAI's names → the gateway's (as POST /v1/chat/completions reads them)."""
    raw = {
        name: body[name] for name in ("temperature", "top_p", "stop") if body.get(name) is not None
    }
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        raw["max_new_tokens"] = max_tokens
    if body.get("n", 1) not in (1, None):
        raise InvalidInferenceInput("Only n=1 is served.", fields={"n": ["Only 1."]})
    if body.get("stream"):
        raise InvalidInferenceInput(
            "A batch answers whole; stream is not available.", fields={"stream": ["false."]}
        )
    return gateway.generation_parameters(raw, field_prefix="")


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInferenceInput(
            "prompt must be one non-empty string.", fields={"prompt": ["One string."]}
        )
    return gateway.check_text(prompt, "prompt")


def _require_generation(target: gateway.Target) -> None:
    if target.task != protocol.TEXT_GENERATION:
        raise InvalidInferenceInput(
            f"{target.check.listing_slug} is a {target.task} model; this call needs "
            f"{protocol.TEXT_GENERATION}.",
            code="wrong_task",
            fields={"model": [f"A {protocol.TEXT_GENERATION} model."]},
        )


def _request_fields(row: RequestLine, resolve) -> tuple[gateway.Target, dict, int]:
    """(what answers the row, the request's fields, the calls it counts): the checks of
    the interactive endpoint, in its order (`resolve`: the licence check of a model
    reference, gateway.target_resolve's). Raises its typed errors."""
    body = row.body
    if row.endpoint == CHAT:
        model, parameters = _model(body), _openai_parameters(body)
        messages = gateway.chat_messages(body.get("messages"))
        target = resolve(gateway.ModelRef.parse(model))
        _require_generation(target)
        return target, {"messages": messages, "parameters": parameters}, 1
    if row.endpoint == COMPLETIONS:
        model, parameters, prompt = _model(body), _openai_parameters(body), _prompt(body)
        target = resolve(gateway.ModelRef.parse(model))
        _require_generation(target)
        return target, {"prompt": prompt, "parameters": parameters}, 1
    model = gateway.ModelRef.parse(row.listing, field_name="listing")
    target = resolve(model)
    if "inputs" not in body:
        raise InvalidInferenceInput(
            'The body needs an "inputs" member.', fields={"inputs": ["Required."]}
        )
    if target.task == protocol.TEXT_CLASSIFICATION:
        inputs = gateway.classification_inputs(body["inputs"])
        return target, {"inputs": inputs}, len(inputs)
    prompt = gateway.check_text(body["inputs"], "inputs")
    parameters = gateway.generation_parameters(body.get("parameters"))
    return target, {"prompt": prompt, "parameters": parameters}, 1


def _inference_request(request_id: str, target: gateway.Target, fields: dict) -> dict:
    request = InferenceRequest(
        request_id=request_id,
        task=target.task,
        base_model=target.base_model,
        adapter=target.adapter,
        deadline=time.time() + settings.BATCH_ROW_TIMEOUT_SECONDS,
        priority=PRIORITY_BATCH,  # only the room interactive calls leave
        **fields,
    )
    return request.to_dict()


def _answer(prepared: Prepared, payload: dict) -> Answer:
    """The engine's answer as the interactive endpoint would have answered it."""
    row, target = prepared.row, prepared.target
    result = protocol.result_from_dict(payload)
    if isinstance(result, InferenceError):
        error_class = _ENGINE_ERRORS.get(result.code, EngineFailed)
        return _refusal(row, prepared.request_id, error_class(result.message, code=result.code))
    if result.adapter_sha256 not in (None, target.adapter.sha256):
        failure = EngineFailed(
            "The engine answered with another adapter than the live version's.",
            code=ErrorCode.ADAPTER_INTEGRITY,
        )
        return _refusal(row, prepared.request_id, failure)
    answer = gateway.GatewayAnswer(
        request_id=prepared.request_id,
        target=target,
        result=result,
        latency_ms=int((time.monotonic() - prepared.started) * 1000),
    )
    # The bodies the interactive endpoints answer, built by their own code.
    if row.endpoint == PREDICT:
        body = predict_body(answer)
    elif row.endpoint == CHAT:
        body = chat_body(answer, int(time.time()))
    else:
        body = completion_body(answer, int(time.time()))
    return Answer(row=row, request_id=prepared.request_id, status_code=200, body=body)


def _retry_in(prepared: Prepared, payload: dict) -> float | None:
    """Seconds before sending a row again that the engine sent back without running it
    for good (its queue was full; its deadline passed while interactive calls had the
    room); None: its answer stands. Nothing was written or billed for it."""
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if code == ErrorCode.OVERLOADED:
        return float(error.get("retry_after") or 1.0)
    if code == ErrorCode.DEADLINE_EXCEEDED and prepared.attempts < MAX_ROW_ATTEMPTS:
        return 0.0
    return None


def _payload(future: Future) -> dict:
    try:
        return future.result()
    except Exception as exc:  # the engine answers errors as values; this is a crash
        logger.exception("batch: a row's engine call raised")
        return {"error": {"code": ErrorCode.ENGINE_ERROR, "message": f"Engine error: {exc}"}}


# --- one slice of a batch -----------------------------------------------------------------


def _claim(batch_id: str, token: str) -> Batch | None:
    """Take the batch's lease when nobody holds it (a lapsed lease counts as a stalled
    resume). None when another worker holds it or the batch has ended."""
    now = timezone.now()
    claimed = (
        Batch.objects.filter(pk=batch_id, status__in=RUNNABLE_BATCH_STATUSES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(
            lease_owner=token,
            lease_expires_at=now + timedelta(seconds=settings.BATCH_LEASE_SECONDS),
            stalled_resumes=Case(
                When(lease_expires_at__isnull=False, then=F("stalled_resumes") + 1),
                default=F("stalled_resumes"),
                output_field=PositiveIntegerField(),
            ),
        )
    )
    if not claimed:
        return None
    Batch.objects.filter(pk=batch_id, status=BatchStatus.VALIDATING).update(
        status=BatchStatus.IN_PROGRESS, in_progress_at=now
    )
    return Batch.objects.select_related("owner", "api_key", "input_file").get(pk=batch_id)


def batch_work(*, batch_id: str, token: str | None = None, engine=None) -> str:
    """Work on a batch for one slice: "done" (it ended), "more" (send it again), "skipped"
    (another worker holds it, or it ended), "lost" (its lease was taken over)."""
    token = token or uuid.uuid4().hex
    batch = _claim(str(batch_id), token)
    if batch is None:
        return "skipped"
    if engine is None:
        from serving.engine.service import engine_get

        engine = engine_get()
    return BatchSlice(batch, token, engine).run()


class BatchSlice:
    def __init__(self, batch: Batch, token: str, engine):
        self.batch = batch
        self.token = token
        self.engine = engine
        self.beat_every = max(0.2, settings.BATCH_LEASE_SECONDS / 3)
        self._prices: dict = {}
        self._targets: dict = {}  # this round's licence checks (BatchSlice._target)

    # ------------------------------------------------------------------ the lease
    def _mine(self):
        return Batch.objects.filter(pk=self.batch.pk, lease_owner=self.token)

    def _beat(self) -> str | None:
        """Renew the lease; the batch's status, or None when the lease was taken."""
        lease_until = timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
        if not self._mine().update(lease_expires_at=lease_until):
            return None
        return Batch.objects.values_list("status", flat=True).get(pk=self.batch.pk)

    def _release(self) -> None:
        self._mine().update(lease_owner="", lease_expires_at=None, sent_at=timezone.now())

    def _caller_refusal(self) -> ApplicationError | None:
        """Why the batch's rows may no longer run: the interactive call would get 401."""
        if not User.objects.filter(pk=self.batch.owner_id, is_active=True).exists():
            return CallerGone("The account that created this batch is suspended.")
        key_id = self.batch.api_key_id
        if key_id is not None and ApiKey.objects.filter(pk=key_id, revoked_at__isnull=False):
            return CallerGone("The API key that created this batch was revoked.")
        return None

    # ------------------------------------------------------------------ the run
    def run(self) -> str:
        batch = self.batch
        if batch.stalled_resumes > settings.BATCH_MAX_STALLED_RESUMES:
            error = {
                "code": "worker_lost", "line": None, "param": None,
                "message": f"The workers running this batch stopped {batch.stalled_resumes} "
                "times without finishing a row; the rows answered so far are in its files.",
            }  # fmt: skip
            return self.finalize(BatchStatus.FAILED, errors=[error])
        if batch.status == BatchStatus.CANCELLING:
            return self.finalize(BatchStatus.CANCELLED)
        if batch.status == BatchStatus.FINALIZING:
            return self.finalize(BatchStatus.COMPLETED)
        if timezone.now() >= batch.expires_at:
            return self.finalize(BatchStatus.EXPIRED)
        stop = self.work_rows()
        if stop == "lost":
            return "lost"
        if stop == "slice":
            self._release()
            return "more"
        ending = {"cancelled": BatchStatus.CANCELLED, "expired": BatchStatus.EXPIRED}
        return self.finalize(ending.get(stop, BatchStatus.COMPLETED))

    def _rows(self) -> Iterator[RequestLine]:
        answered = set(BatchLine.objects.filter(batch=self.batch).values_list("line", flat=True))
        with default_storage.open(self.batch.input_file.storage_path, "rb") as handle:
            for number, raw in file_lines(handle):
                if number not in answered:
                    yield parse_request_line(number, raw)  # checked at upload

    def work_rows(self) -> str:
        """Rows through the engine until none is left ("done"), the slice is over
        ("slice"), the batch was cancelled or expired, or the lease was lost."""
        in_flight_limit = cap = settings.BATCH_ROWS_IN_FLIGHT
        slice_ends = time.monotonic() + settings.BATCH_SLICE_SECONDS
        rows = self._rows()
        in_flight: dict[Future, Prepared] = {}
        retries: deque[tuple[float, Prepared]] = deque()  # (due, row) the engine sent back
        reserved: Counter = Counter()  # units in flight per licence, not yet in the ledger
        refused: list[Answer] = []
        stop, exhausted = "", False
        caller_refusal = self._caller_refusal()
        last_beat = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=in_flight_limit, thread_name_prefix="batch-row")

        def submit(prepared: Prepared) -> None:
            in_flight[pool.submit(self.engine.infer, prepared.request)] = prepared
            reserved[prepared.licence_id] += prepared.units

        try:
            while True:
                self._targets.clear()  # each round reads the licences again
                while not stop and len(in_flight) < cap:
                    if time.monotonic() - last_beat >= self.beat_every:
                        break  # renew the lease first (a file of refused rows runs long)
                    if retries:  # the engine's queue was full: nothing new until they go
                        if retries[0][0] > time.monotonic():
                            break
                        submit(retries.popleft()[1].again())
                        continue
                    row = None if exhausted else next(rows, None)
                    if row is None:
                        exhausted = True
                        break
                    prepared = self._prepare(row, reserved, caller_refusal, refused)
                    if prepared is not None:
                        submit(prepared)
                    if len(refused) >= COMMIT_EVERY:
                        self._commit(refused)
                        refused = []
                if refused:
                    self._commit(refused)
                    refused = []
                if not in_flight and (stop or (exhausted and not retries)):
                    break
                beat_in = max(0.0, self.beat_every - (time.monotonic() - last_beat))
                if retries and not in_flight:
                    time.sleep(min(beat_in, max(0.0, retries[0][0] - time.monotonic())))
                elif in_flight:
                    finished, _ = wait(list(in_flight), timeout=beat_in,
                                       return_when=FIRST_COMPLETED)  # fmt: skip
                    done = []
                    for future in finished:
                        prepared, payload = in_flight.pop(future), _payload(future)
                        reserved[prepared.licence_id] -= prepared.units
                        delay = _retry_in(prepared, payload)
                        if delay is None:
                            done.append((prepared, payload))
                            cap = min(in_flight_limit, cap + 1)
                        else:  # fewer rows in flight while the engine has no room
                            retries.append((time.monotonic() + delay, prepared))
                            cap = max(1, cap // 2)
                    if done:
                        self._commit([_answer(prepared, payload) for prepared, payload in done],
                                     prepared_by_line={p.row.line: p for p, _ in done})  # fmt: skip
                if time.monotonic() - last_beat >= self.beat_every:
                    last_beat = time.monotonic()
                    status = self._beat()
                    if status is None or status == BatchStatus.CANCELLING:
                        for prepared in in_flight.values():
                            gateway.cancel_request(prepared.request_id)
                        return "lost" if status is None else "cancelled"
                    caller_refusal = self._caller_refusal()
                if not stop and time.monotonic() >= slice_ends:
                    stop = "slice"  # the rows in flight finish and are written first
                if not stop and timezone.now() >= self.batch.expires_at:
                    stop = "expired"
        except LeaseLost:
            logger.warning("batch %s: its lease was taken over; this worker stops", self.batch.pk)
            for prepared in in_flight.values():
                gateway.cancel_request(prepared.request_id)
            return "lost"
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            rows.close()
        if exhausted and not retries and stop in ("", "slice"):
            return "done"
        return stop or "done"

    def _prepare(self, row, reserved, caller_refusal, refused) -> Prepared | None:
        request_id = uuid.uuid4().hex
        try:
            if caller_refusal is not None:
                raise caller_refusal
            target, fields, units = _request_fields(row, self._target)
            # quota and spend cap, counting this batch's rows still in the engine
            target.check.require_calls(units + reserved[target.check.licence_id])
        except ApplicationError as exc:
            refused.append(_refusal(row, request_id, exc))
            return None
        return Prepared(
            row=row,
            request_id=request_id,
            target=target,
            units=units,
            request=_inference_request(request_id, target, fields),
            started=time.monotonic(),
        )

    def _target(self, model: gateway.ModelRef) -> gateway.Target:
        """The licence check for a row (404, 403), read once per round of rows handed to
        the engine: the rows of one round are checked at the same moment. The ledger
        write checks the licence, the quota and the spend cap again, atomically."""
        key = (model.listing_slug, model.version_number)
        if key not in self._targets:
            try:
                self._targets[key] = gateway.target_resolve(user=self.batch.owner, model=model)
            except ApplicationError as exc:
                self._targets[key] = exc
            except gateway.GardenOnTheEventLoop:
                self._targets[key] = InvalidInferenceInput(
                    f"{model.listing_slug} is a garden; gardens answer interactive calls "
                    "only, not batches.",
                    code="garden_not_batchable",
                )
        found = self._targets[key]
        if isinstance(found, ApplicationError):
            raise copy.copy(found).with_traceback(None)
        return found

    # ------------------------------------------------------------------ writing answers
    def _price_percent(self, licence_id) -> int:
        if licence_id not in self._prices:
            self._prices[licence_id] = licence_batch_price_percent(licence_id=licence_id)
        return self._prices[licence_id]

    def _commit(self, answers: list[Answer], prepared_by_line: dict | None = None) -> None:
        """Write answers with their ledger rows and the batch's counters, all in one
        transaction: served rows billed at the batch price and settled at once (a row
        past the quota or spend cap, taken meanwhile, becomes that refusal), engine
        failures written `error` (not billed), refusals without a ledger row. Raises
        LeaseLost, with nothing written, when another worker answered one of these rows
        already (its line exists): this worker's lease was taken over."""
        prepared_by_line = prepared_by_line or {}
        final = list(answers)
        per_licence: dict = defaultdict(list)  # licence id -> [(index, FinishedCall)]
        for index, answer in enumerate(answers):
            prepared = prepared_by_line.get(answer.row.line)
            if prepared is None or prepared.licence_id is None:
                continue  # refused before the engine, or the listing's owner: no row
            per_licence[prepared.licence_id].append((index, self._finished_call(answer, prepared)))
        try:
            with transaction.atomic():
                for licence_id, calls in per_licence.items():
                    try:
                        outcomes = usage_record_finished(
                            licence_id=licence_id,
                            calls=[call for _, call in calls],
                            api_key_id=self.batch.api_key_id,
                            price_percent=self._price_percent(licence_id),
                        )
                    except ApplicationError as exc:  # the licence ended meanwhile: 403
                        outcomes = [exc] * len(calls)
                    for (index, _), refusal in zip(calls, outcomes, strict=True):
                        if refusal is not None and final[index].succeeded:
                            row, request_id = final[index].row, final[index].request_id
                            final[index] = _refusal(row, request_id, refusal)
                BatchLine.objects.bulk_create(
                    [
                        BatchLine(
                            batch=self.batch, line=answer.row.line,
                            custom_id=answer.row.custom_id, request_id=answer.request_id,
                            succeeded=answer.succeeded, status_code=answer.status_code,
                            body=answer.body,
                        )
                        for answer in final
                    ]
                )  # fmt: skip
                completed = sum(answer.succeeded for answer in final)
                Batch.objects.filter(pk=self.batch.pk).update(
                    request_completed=F("request_completed") + completed,
                    request_failed=F("request_failed") + len(final) - completed,
                    stalled_resumes=0,
                )
        except IntegrityError as exc:
            raise LeaseLost(f"batch {self.batch.pk}: a row was answered elsewhere") from exc

    def _finished_call(self, answer: Answer, prepared: Prepared) -> FinishedCall:
        return FinishedCall(
            idempotency_key=f"batch:{self.batch.pk}:{answer.row.line}",
            units=prepared.units,
            status=UsageStatus.OK if answer.succeeded else UsageStatus.ERROR,
            listing_version_id=prepared.target.check.listing_version_id,
            latency_ms=int((time.monotonic() - prepared.started) * 1000),
        )

    # ------------------------------------------------------------------ the end
    def finalize(self, status: str, *, errors: list | None = None) -> str:
        """Write the output and error files (input order) and end the batch, once: the
        files are written under the batch's own names (a retry rewrites them), the rows
        that point at them are committed with the new status under the lease."""
        batch = self.batch
        if status == BatchStatus.COMPLETED:
            self._mine().filter(status=BatchStatus.IN_PROGRESS).update(
                status=BatchStatus.FINALIZING, finalizing_at=timezone.now()
            )
        expired = status == BatchStatus.EXPIRED
        output = self._write_file("output", succeeded=True)
        failures, unanswered = self._write_errors(expired=expired)
        now = timezone.now()
        with transaction.atomic():
            current = Batch.objects.select_for_update().get(pk=batch.pk)
            if current.lease_owner != self.token or current.status in ENDED_BATCH_STATUSES:
                return "lost"
            if status == BatchStatus.COMPLETED and current.status == BatchStatus.CANCELLING:
                status = BatchStatus.CANCELLED  # cancelled as its last rows came back
            fields = {
                "status": status,
                "lease_owner": "",
                "lease_expires_at": None,
                "output_file": self._file_row(output),
                "error_file": self._file_row(failures),
                "request_failed": current.request_failed + unanswered,
                "errors": errors or [],
                f"{status}_at": now,
            }
            for name, value in fields.items():
                setattr(current, name, value)
            current.save(update_fields=list(fields))
        logger.info("batch %s %s", batch.pk, status)
        return "done"

    def _file_row(self, stored: tuple[str, str, int] | None) -> BatchFile | None:
        if stored is None:
            return None
        name, sha256, size = stored
        return BatchFile.objects.create(
            owner_id=self.batch.owner_id,
            purpose=FilePurpose.BATCH_OUTPUT,
            filename=Path(name).name,
            storage_path=name,
            size_bytes=size,
            sha256=sha256,
        )

    def _store(self, kind: str, lines: Iterator[dict]) -> tuple[str, str, int] | None:
        """Lines to a temporary file, then to storage as batches/<batch id>/<kind>.jsonl
        (replacing what a crashed attempt left); None when there is no line."""
        with tempfile.TemporaryDirectory(dir=settings.FILE_UPLOAD_TEMP_DIR) as folder:
            path = Path(folder) / f"{self.batch.pk}_{kind}.jsonl"
            count = 0
            with path.open("w", encoding="utf-8") as out:
                for line in lines:
                    out.write(_json_line(line))
                    count += 1
            if not count:
                return None
            name = artifacts.store_replacing(f"batches/{self.batch.pk}/{kind}.jsonl", path)
            return name, artifacts.sha256_of_path(path), path.stat().st_size

    def _write_file(self, kind: str, *, succeeded: bool):
        lines = (
            BatchLine.objects.filter(batch=self.batch, succeeded=succeeded)
            .order_by("line")
            .iterator(chunk_size=1000)
        )
        return self._store(kind, (_output_line(line) for line in lines))

    def _write_errors(self, *, expired: bool) -> tuple[tuple | None, int]:
        """The error file: refused and failed rows and, for an expired batch, every row
        never answered (`batch_expired`, counted failed), merged in input order."""
        unanswered = 0
        if not expired:
            return self._write_file("errors", succeeded=False), 0

        def merged():
            nonlocal unanswered
            failed = (
                BatchLine.objects.filter(batch=self.batch, succeeded=False)
                .order_by("line")
                .iterator(chunk_size=1000)
            )
            pending = next(failed, None)
            for row in self._rows():  # the rows without an answer
                while pending is not None and pending.line < row.line:
                    yield _output_line(pending)
                    pending = next(failed, None)
                unanswered += 1
                yield {
                    "id": f"batch_req_{uuid.uuid4().hex}", "custom_id": row.custom_id,
                    "response": None,
                    "error": {"code": "batch_expired", "message": "This request could not "
                              "be executed before the completion window expired."},
                }  # fmt: skip
            while pending is not None:
                yield _output_line(pending)
                pending = next(failed, None)

        stored = self._store("errors", merged())
        return stored, unanswered


def _output_line(line: BatchLine) -> dict:
    return {
        "id": f"batch_req_{line.request_id}",
        "custom_id": line.custom_id,
        "response": {
            "status_code": line.status_code,
            "request_id": line.request_id,
            "body": line.body,
        },
        "error": None,
    }


def _json_line(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"
