from collections.abc import Iterable

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from marketplace.admin import ReadOnlyAdmin
from training_worker import selectors
from training_worker.ml.data_families import unpack_digests
from training_worker.models import (
    BaseModel,
    DataFamily,
    Dataset,
    FineTuningJob,
    JobEvent,
    ModelVersion,
)


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    """Operators register base models here (repo id + pinned revision, or a local path)."""

    list_display = ["slug", "display_name", "source", "revision", "tasks", "enabled"]
    list_filter = ["enabled"]
    search_fields = ["slug", "source"]


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = [
        "name", "owner", "task", "status", "rows_usable", "sealed_rows", "family", "created_at",
    ]  # fmt: skip
    list_filter = ["status", "task"]
    search_fields = ["name", "owner__email", "sha256"]


def _change_link(obj, text) -> str:
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text)


def _figure(value) -> str:
    return "—" if value is None else f"{value:+.4f}" if isinstance(value, float) else str(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A small HTML table; every cell is escaped (links come in already built)."""
    rows = [tuple(row) for row in rows]
    if not rows:
        return format_html("<p>{}</p>", "Nothing yet.")
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _attempt_row(entry: selectors.FamilyJob) -> tuple:
    job, report = entry.job, entry.report
    version = job.fine_tuned_model
    strongest = report.strongest_baseline if report else None
    lift = strongest.lift if strongest else None
    shown = f"[{_figure(lift.ci_low)}, {_figure(lift.ci_high)}]" if lift else "—"
    plain = "[{}, {}]".format(*map(_figure, lift.uncorrected_interval)) if lift else "—"
    return (
        entry.evaluation_number or "—",
        _change_link(job, str(job.pk)[:8]),
        _change_link(job.dataset, job.dataset.name),
        job.status,
        job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        _change_link(version, version.name) if version else "—",
        report.prior_sealed_evaluations if report else "—",
        f"{report.primary_metric} {report.score:.4f}" if report and report.score is not None
        else "—",
        f"{_figure(lift.delta)} over {strongest.display_name}" if lift else "—",
        shown,
        plain,
    )  # fmt: skip


@admin.register(DataFamily)
class DataFamilyAdmin(ReadOnlyAdmin):
    """A data family (near-duplicate datasets of one owner sharing one sealed split) and
    the attempt history on it: every sealed evaluation its owner ran, in the order they are
    counted. The sealed keys themselves are never shown, only how many there are."""

    list_display = ["__str__", "owner", "task", "root_dataset", "dataset_count", "created_at"]
    list_filter = ["task"]
    list_select_related = ["owner", "root_dataset"]
    search_fields = ["owner__email", "datasets__name"]
    fields = [
        "owner", "task", "root_dataset", "created_at", "key_counts", "datasets_table",
        "attempt_history",
    ]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="datasets")
    def dataset_count(self, family: DataFamily) -> int:
        return family.datasets.count()

    @admin.display(description="Inputs")
    def key_counts(self, family: DataFamily) -> str:
        return (
            f"{len(unpack_digests(family.input_keys))} distinct inputs in its first dataset, "
            f"{len(unpack_digests(family.sealed_keys))} of them sealed (stored as keyed "
            "digests, never as text)"
        )

    @admin.display(description="Datasets")
    def datasets_table(self, family: DataFamily) -> str:
        rows = [
            (
                _change_link(dataset, dataset.name),
                dataset.status + (" (deleted)" if dataset.deleted_at else ""),
                dataset.rows_usable,
                dataset.sealed_rows,
                "first" if dataset.pk == family.root_dataset_id else "joined",
                dataset.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
            for dataset in selectors.data_family_datasets(family=family)
        ]
        return _table(["dataset", "status", "rows", "sealed rows", "", "uploaded"], rows)

    @admin.display(description="Attempts (sealed evaluations, in the order counted)")
    def attempt_history(self, family: DataFamily) -> str:
        history = selectors.data_family_history(family=family)
        evaluated = sum(1 for entry in history if entry.evaluation_number)
        summary = format_html(
            "<p>{} sealed evaluation(s) on this data family; jobs are counted in the order "
            "they were created, and a job counts once it produced an evaluation.</p>",
            evaluated,
        )
        table = _table(
            [
                "#", "job", "dataset", "status", "created", "version", "recorded before it",
                "score", "lift over the strongest baseline", "interval shown (corrected)",
                "uncorrected 95% interval",
            ],
            (_attempt_row(entry) for entry in history),
        )  # fmt: skip
        return format_html("{}{}", summary, table)


class JobEventInline(admin.TabularInline):
    model = JobEvent
    fields = ["created_at", "level", "type", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(FineTuningJob)
class FineTuningJobAdmin(ReadOnlyAdmin):
    list_display = ["id", "owner", "base_model", "status", "step", "total_steps", "created_at"]
    list_filter = ["status", "base_model"]
    search_fields = ["id", "owner__email"]
    inlines = [JobEventInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["name", "owner", "base_model", "task", "adapter_sha256", "created_at"]
    search_fields = ["name", "owner__email", "adapter_sha256"]
