"""Sealed benchmark sets: created by moderators (or shipped with the demo), read only by
the leaderboard's scoring task.

A set's rows pass the platform's dataset validation, are stored once under the sealed
prefix of the default storage (``sealed/benchmarks/...``: no URL is ever made for it) and
are read back only by ``benchmark_rows``, which checks their SHA-256. Nothing here returns a
row to a page or an API: the admin and the leaderboards show counts, labels and the hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import User
from evidence.errors import BenchmarkNotFound, InvalidBenchmark, InvalidLabelMap, NotAModerator
from evidence.models import BenchmarkLabelMap, BenchmarkSet
from marketplace.storage import SEALED_PREFIX
from training_worker import upload_checks
from training_worker.ml.dataset_validation import (
    TASKS,
    TEXT_CLASSIFICATION,
    ValidationLimits,
    validate_dataset,
)
from training_worker.ml.graded_metrics import choose_graded_metric
from training_worker.services import ALLOWED_EXTENSIONS

BENCHMARK_MAX_ROWS = 5_000  # every listing of the task answers every row: bounded work
BENCHMARK_MIN_ROWS = 20
SHIPPED_DIR = Path(__file__).resolve().parent / "benchmark_data"
SOURCE_FIELDS = ("name", "url", "licence", "attribution")
ACCURACY = {
    "name": "accuracy",
    "label": "Accuracy",
    "higher_is_better": True,
    "why": "the share of the set's rows a model labels as the set does",
}


def _require_moderator(actor: User | None) -> None:
    if actor is None or not actor.is_moderator:
        raise NotAModerator("Only moderators curate benchmark sets.")


def _clean_sources(sources) -> list[dict]:
    """[{name, url, licence, attribution}], at least one, each with a name and a licence."""
    if isinstance(sources, str):
        try:
            sources = json.loads(sources)
        except ValueError:
            sources = None
    if not isinstance(sources, list) or not sources:
        raise InvalidBenchmark(
            "Name the public corpora the rows come from, with their licences.",
            fields={"sources": ["A JSON list of {name, url, licence, attribution}."]},
        )
    cleaned = []
    for source in sources:
        if not isinstance(source, dict):
            raise InvalidBenchmark("Each source is an object.", fields={"sources": ["Objects."]})
        entry = {name: str(source.get(name) or "").strip()[:500] for name in SOURCE_FIELDS}
        if not entry["name"] or not entry["licence"]:
            raise InvalidBenchmark(
                "Every source needs a name and a licence.",
                fields={"sources": ["Each source: a name and its licence."]},
            )
        cleaned.append(entry)
    return cleaned


def _metric_for(task: str, rows: list[dict]) -> dict:
    if task == TEXT_CLASSIFICATION:
        return dict(ACCURACY)
    return choose_graded_metric(rows).describe()


def _store_rows(slug: str, rows: list[dict]) -> tuple[str, str]:
    """The rows as JSON Lines under the sealed prefix, content-addressed; (name, sha256)."""
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    sha256 = hashlib.sha256(body).hexdigest()
    name = f"{SEALED_PREFIX}benchmarks/{slug}/{sha256}.jsonl"
    if not default_storage.exists(name):
        name = default_storage.save(name, ContentFile(body))
    return name, sha256


def _create(
    *,
    slug: str,
    title: str,
    task: str,
    description: str,
    sources,
    filename: str,
    raw: bytes,
    created_by: User | None,
) -> BenchmarkSet:
    slug = slugify(slug or title)[:80]
    title = (title or "").strip()[:160]
    if not slug or not title:
        raise InvalidBenchmark(
            "A benchmark set needs a title and a slug.", fields={"title": ["Required."]}
        )
    if task not in TASKS:
        raise InvalidBenchmark(f"Choose a task: {', '.join(TASKS)}.", fields={"task": [task]})
    if BenchmarkSet.objects.filter(slug=slug).exists():
        raise InvalidBenchmark("A benchmark set has this slug.", fields={"slug": ["Taken."]})
    sources = _clean_sources(sources)
    result = validate_dataset(
        raw,
        filename=filename,
        task=task,
        limits=ValidationLimits(max_rows=BENCHMARK_MAX_ROWS, min_rows=BENCHMARK_MIN_ROWS),
    )
    if not result.ok:
        messages = [issue["message"] for issue in result.report["errors"]]
        raise InvalidBenchmark(
            "The rows file did not pass validation: " + " ".join(messages),
            fields={"rows_file": messages},
        )
    if result.task != task:
        raise InvalidBenchmark(
            f"The rows are for {result.task}, not {task}.", fields={"task": [str(result.task)]}
        )
    rows = [{k: v for k, v in row.items() if k != "row"} for row in result.rows]
    labels = sorted({row["label"] for row in rows}) if task == TEXT_CLASSIFICATION else []
    rows_path, sha256 = _store_rows(slug, rows)
    try:
        with transaction.atomic():
            return BenchmarkSet.objects.create(
                slug=slug,
                title=title,
                task=task,
                description=(description or "").strip(),
                labels=labels,
                rows_path=rows_path,
                row_count=len(rows),
                rows_sha256=sha256,
                metric=_metric_for(task, rows),
                sources=sources,
                created_by=created_by,
            )
    except IntegrityError as exc:  # another moderator took the slug meanwhile
        raise InvalidBenchmark(
            "A benchmark set has this slug.", fields={"slug": ["Taken."]}
        ) from exc


def benchmark_set_create(
    *,
    moderator: User,
    title: str,
    task: str,
    rows_file,
    sources,
    slug: str = "",
    description: str = "",
) -> BenchmarkSet:
    """A moderator creates an active set from an uploaded rows file (the dataset formats).

    The file must pass the platform's dataset validation for ``task`` (at least
    BENCHMARK_MIN_ROWS, at most BENCHMARK_MAX_ROWS usable rows); ``sources`` names the public
    corpora with their licences. The normalised rows are stored under the sealed prefix.
    Raises NotAModerator (403) and InvalidBenchmark (422).
    """
    _require_moderator(moderator)
    # The dataset upload's checks: its formats only, bounded, never unpacked, never binary.
    filename = upload_checks.display_filename(getattr(rows_file, "name", "") or "rows.jsonl")
    extension = Path(filename).suffix.lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise InvalidBenchmark(
            "Upload the rows as a .csv, .jsonl or .json file.",
            code="unsupported_file_type",
            fields={"rows_file": [f"Unsupported extension {extension or '(none)'}."]},
        )
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    raw = rows_file.read(limit + 1)
    if len(raw) > limit:
        raise InvalidBenchmark(
            f"The file is over {limit:,} bytes.",
            code="file_too_large",
            fields={"rows_file": [f"At most {limit:,} bytes."]},
        )
    upload_checks.refuse_compressed_or_binary(raw[: upload_checks.SNIFF_BYTES])
    return _create(
        slug=slug,
        title=title,
        task=task,
        description=description,
        sources=sources,
        filename=filename,
        raw=raw,
        created_by=moderator,
    )


def benchmark_set_set_active(*, moderator: User, benchmark_id: int, active: bool) -> BenchmarkSet:
    """Open or close a set's board: a closed set is neither scored nor shown."""
    _require_moderator(moderator)
    with transaction.atomic():
        benchmark = BenchmarkSet.objects.select_for_update().filter(pk=benchmark_id).first()
        if benchmark is None:
            raise BenchmarkNotFound("No benchmark set here.")
        benchmark.is_active = active
        benchmark.save(update_fields=["is_active"])
    return benchmark


def benchmark_label_map_approve(
    *, moderator: User, benchmark_id: int, listing_id, mapping: dict | None = None
) -> BenchmarkLabelMap:
    """Approve a map from a set's labels to a listing's (``mapping`` given: create or
    replace it; omitted: approve the stored one). It must name every label of the set once,
    each onto a different label of the listing's live version. Raises InvalidLabelMap."""
    from listings.models import Listing

    _require_moderator(moderator)
    with transaction.atomic():
        benchmark = BenchmarkSet.objects.filter(pk=benchmark_id).first()
        listing = Listing.objects.select_related("live_version").filter(pk=listing_id).first()
        if benchmark is None or listing is None:
            raise BenchmarkNotFound("No such benchmark set or listing.")
        existing = (
            BenchmarkLabelMap.objects.select_for_update()
            .filter(benchmark=benchmark, listing=listing)
            .first()
        )
        if mapping is None:
            if existing is None:
                raise InvalidLabelMap("There is no label map to approve.")
            mapping = existing.mapping
        if benchmark.task != TEXT_CLASSIFICATION:
            raise InvalidLabelMap("Only classification sets have labels to map.")
        model_labels = listing.live_version.labels if listing.live_version else []
        problem = label_map_problem(benchmark.labels, model_labels, mapping)
        if problem:
            raise InvalidLabelMap(problem, fields={"mapping": [problem]})
        label_map = existing or BenchmarkLabelMap(benchmark=benchmark, listing=listing)
        label_map.mapping = {label: mapping[label] for label in benchmark.labels}
        label_map.approved_by, label_map.approved_at = moderator, timezone.now()
        label_map.save()
    return label_map


def label_map_problem(set_labels: list[str], model_labels: list[str], mapping) -> str:
    """Why ``mapping`` ({set label: model label}) cannot be approved; "" when it can."""
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        return "A label map is an object of {benchmark label: listing label}."
    if set(mapping) != set(set_labels):
        return f"Map every label of the set, and only those: {', '.join(set_labels)}."
    if not set(mapping.values()) <= set(model_labels):
        return f"Map onto the listing's labels: {', '.join(model_labels) or 'it has none'}."
    if len(set(mapping.values())) != len(mapping):
        return "Map each label of the set onto a different label of the listing."
    return ""


def contender_label_map(
    *, task: str, set_labels: list[str], model_labels: list[str], approved: dict | None
) -> dict[str, str] | None:
    """Whether a listing fits a set, as the scoring's label map (model label -> set label):
    ``{}`` when its labels cover the set's (or for generation, which fits by task), the
    inverted approved map when one is given and still valid, None when it does not fit."""
    if task != TEXT_CLASSIFICATION:
        return {}
    if set(set_labels) <= set(model_labels):
        return {}
    if approved and not label_map_problem(set_labels, model_labels, approved):
        return {model: label for label, model in approved.items()}
    return None


def approved_label_maps(*, listing_ids) -> dict[tuple[int, object], dict]:
    """(benchmark id, listing id) -> approved mapping, for these listings."""
    maps = BenchmarkLabelMap.objects.filter(
        listing_id__in=list(listing_ids), approved_at__isnull=False
    ).values_list("benchmark_id", "listing_id", "mapping")
    return {(benchmark_id, listing_id): mapping for benchmark_id, listing_id, mapping in maps}


def benchmark_rows(benchmark: BenchmarkSet) -> list[dict]:
    """The set's rows, for the scoring task only. Raises InvalidBenchmark when the stored
    file is not the one the set was created with (its SHA-256)."""
    with default_storage.open(benchmark.rows_path, "rb") as handle:
        body = handle.read()
    if hashlib.sha256(body).hexdigest() != benchmark.rows_sha256:
        raise InvalidBenchmark(
            "The set's stored rows do not match their hash.", code="benchmark_rows_changed"
        )
    return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]


def shipped_manifest() -> list[dict]:
    """The sets that ship with the demo (evidence/benchmark_data/manifest.json)."""
    manifest = json.loads((SHIPPED_DIR / "manifest.json").read_text(encoding="utf-8"))
    return manifest["sets"]


def benchmark_sets_seed_shipped(*, created_by: User | None = None) -> list[BenchmarkSet]:
    """Create each shipped set that does not exist yet (by slug), through the same
    validation as a moderator's; never touches a set that exists, whoever changed it.
    Idempotent; reads only files committed to the repository."""
    created = []
    for spec in shipped_manifest():
        if BenchmarkSet.objects.filter(slug=spec["slug"]).exists():
            continue
        raw = (SHIPPED_DIR / spec["file"]).read_bytes()
        if hashlib.sha256(raw).hexdigest() != spec["sha256"]:
            raise InvalidBenchmark(f"{spec['file']} does not match its manifest's SHA-256.")
        try:
            created.append(
                _create(
                    slug=spec["slug"],
                    title=spec["title"],
                    task=spec["task"],
                    description=spec["description"],
                    sources=spec["sources"],
                    filename=spec["file"],
                    raw=raw,
                    created_by=created_by,
                )
            )
        except InvalidBenchmark:
            if not BenchmarkSet.objects.filter(slug=spec["slug"]).exists():
                raise  # a real problem, not a concurrent seed
    return created
