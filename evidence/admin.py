"""The moderation console's evidence pages: benchmark sets and their label maps.

Moderators create a set from an uploaded rows file and approve label maps; every write is
one evidence.benchmarks service (moderator checked, rows validated). A set's rows are never
displayed here: its pages show counts, labels, the metric, the sources and the SHA-256.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from evidence import benchmarks
from evidence.models import BenchmarkLabelMap, BenchmarkSet, LeaderboardEntry
from marketplace.admin import ReadOnlyAdmin
from marketplace.errors import ApplicationError
from training_worker.ml.dataset_validation import TASKS

SOURCES_EXAMPLE = json.dumps(
    [
        {
            "name": "Corpus name and version",
            "url": "https://…",
            "licence": "CC-BY-4.0",
            "attribution": "Who to credit",
        }
    ],
    indent=1,
)


def _errors_onto(form: forms.Form, error: ApplicationError, default_field: str) -> None:
    """A service's refusal as form errors, on the fields it names where the form has them."""
    placed = False
    for name, problems in (error.fields or {}).items():
        target = name if name in form.fields else None
        for problem in problems or [error.message]:
            form.add_error(target, str(problem))
            placed = True
    if not placed:
        form.add_error(default_field, error.message)


class _CreatedByService:
    """Admin forms whose clean() calls the service; save_model keeps what it wrote."""

    def save_model(self, request, obj, form, change) -> None:
        obj.pk = form.created.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change) -> None:
        return None


class BenchmarkSetCreateForm(forms.ModelForm):
    task = forms.ChoiceField(choices=[(t, t) for t in TASKS])
    rows_file = forms.FileField(
        help_text="The rows, in the dataset formats (CSV or JSON Lines: text,label or "
        "prompt,completion). They are validated, stored sealed, and never shown again."
    )
    sources_json = forms.CharField(
        label="Sources",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80}),
        initial=SOURCES_EXAMPLE,
        help_text="The public corpora the rows come from: a JSON list of {name, url, "
        "licence, attribution}; each needs a name and its licence.",
    )

    class Meta:
        model = BenchmarkSet
        fields = ["title", "slug", "task", "description"]

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request
        self.fields["slug"].required = False

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.created = benchmarks.benchmark_set_create(
                moderator=self.request.user,
                title=cleaned.get("title", ""),
                slug=cleaned.get("slug", ""),
                task=cleaned.get("task", ""),
                description=cleaned.get("description", ""),
                sources=cleaned.get("sources_json", ""),
                rows_file=cleaned["rows_file"],
            )
        except ApplicationError as error:
            _errors_onto(self, error, "rows_file")
        return cleaned

    def _post_clean(self) -> None:
        return None  # the service in clean() validated and wrote the row


@admin.register(BenchmarkSet)
class BenchmarkSetAdmin(_CreatedByService, admin.ModelAdmin):
    list_display = ["title", "slug", "task", "row_count", "labels_shown", "is_active", "created_at"]
    list_filter = ["task", "is_active"]
    search_fields = ["title", "slug"]
    actions = ["close_boards", "open_boards"]
    # Never rows_path's content, never a row: counts, labels, hash, metric and sources.
    readonly_fields = [
        "slug",
        "title",
        "task",
        "description",
        "labels_shown",
        "row_count",
        "rows_sha256",
        "metric_shown",
        "sources_shown",
        "is_active",
        "created_by",
        "created_at",
        "board",
    ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            form = BenchmarkSetCreateForm

            class WithRequest(form):
                def __init__(self, *args, **kw):
                    super().__init__(*args, request=request, **kw)

            return WithRequest
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["title", "slug", "task", "description", "sources_json", "rows_file"]
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_moderate_permission(self, request) -> bool:
        return request.user.is_moderator

    @admin.display(description="labels")
    def labels_shown(self, obj: BenchmarkSet) -> str:
        return ", ".join(obj.labels) or "—"

    @admin.display(description="metric")
    def metric_shown(self, obj: BenchmarkSet) -> str:
        metric = obj.metric or {}
        direction = "higher" if metric.get("higher_is_better", True) else "lower"
        return f"{metric.get('label', '—')} ({direction} is better)"

    @admin.display(description="sources")
    def sources_shown(self, obj: BenchmarkSet) -> str:
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} — {} <a href='{}' rel='noopener'>{}</a> <em>{}</em></li>",
                (
                    (
                        s.get("name"),
                        s.get("licence"),
                        s.get("url"),
                        s.get("url"),
                        s.get("attribution"),
                    )
                    for s in obj.sources or []
                ),
            ),
        )

    @admin.display(description="leaderboard")
    def board(self, obj: BenchmarkSet) -> str:
        if not obj.is_active:
            return "Closed: not scored, not shown."
        return format_html("<a href='/leaderboards/{}/{}/'>Open its page</a>", obj.task, obj.slug)

    def _set_active(self, request, queryset, active: bool) -> None:
        for benchmark in queryset:
            try:
                benchmarks.benchmark_set_set_active(
                    moderator=request.user, benchmark_id=benchmark.pk, active=active
                )
            except ApplicationError as error:
                messages.error(request, f"“{benchmark}”: {error.message}")
            else:
                messages.success(request, f"“{benchmark}”: {'opened' if active else 'closed'}.")

    @admin.action(
        description="Close the selected boards (no scoring, not shown)", permissions=["moderate"]
    )
    def close_boards(self, request, queryset) -> None:
        self._set_active(request, queryset, False)

    @admin.action(description="Open the selected boards", permissions=["moderate"])
    def open_boards(self, request, queryset) -> None:
        self._set_active(request, queryset, True)


class LabelMapForm(forms.ModelForm):
    mapping = forms.JSONField(
        help_text="{benchmark label: listing label}, every label of the set once, each onto a "
        "different label of the listing's live version. Saving approves it."
    )

    class Meta:
        model = BenchmarkLabelMap
        fields = ["benchmark", "listing", "mapping"]

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.created = benchmarks.benchmark_label_map_approve(
                moderator=self.request.user,
                benchmark_id=cleaned["benchmark"].pk,
                listing_id=cleaned["listing"].pk,
                mapping=cleaned["mapping"],
            )
        except ApplicationError as error:
            _errors_onto(self, error, "mapping")
        return cleaned

    def _post_clean(self) -> None:
        return None  # the service in clean() validated and wrote (or replaced) the map


@admin.register(BenchmarkLabelMap)
class BenchmarkLabelMapAdmin(_CreatedByService, admin.ModelAdmin):
    list_display = ["benchmark", "listing", "mapping", "approved_by", "approved_at"]
    list_select_related = ["benchmark", "listing", "approved_by"]
    raw_id_fields = ["listing"]
    actions = ["approve"]
    readonly_fields = ["benchmark", "listing", "mapping", "approved_by", "approved_at"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:

            class WithRequest(LabelMapForm):
                def __init__(self, *args, **kw):
                    super().__init__(*args, request=request, **kw)

            kwargs["form"] = WithRequest
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["benchmark", "listing", "mapping"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_moderate_permission(self, request) -> bool:
        return request.user.is_moderator

    @admin.action(description="Approve the selected label maps", permissions=["moderate"])
    def approve(self, request, queryset) -> None:
        for label_map in queryset:
            try:
                benchmarks.benchmark_label_map_approve(
                    moderator=request.user,
                    benchmark_id=label_map.benchmark_id,
                    listing_id=label_map.listing_id,
                )
            except ApplicationError as error:
                messages.error(request, f"“{label_map.listing}”: {error.message}")
            else:
                messages.success(request, f"“{label_map.listing}”: approved.")


@admin.register(LeaderboardEntry)
class LeaderboardEntryAdmin(ReadOnlyAdmin):
    """Scores on the boards, current and superseded; written only by the scoring task."""

    list_display = [
        "benchmark",
        "listing",
        "version_number",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "rows",
        "scored_at",
        "superseded_at",
    ]
    list_filter = ["benchmark", ("superseded_at", admin.EmptyFieldListFilter)]
    list_select_related = ["benchmark", "listing"]
    search_fields = ["listing__slug", "listing__title"]

    @admin.display(description="version")
    def version_number(self, obj: LeaderboardEntry):
        return (obj.detail or {}).get("version_number")
