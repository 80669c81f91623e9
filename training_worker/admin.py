from django.contrib import admin

from marketplace.admin import ReadOnlyAdmin
from training_worker.models import BaseModel, Dataset, FineTuningJob, JobEvent, ModelVersion


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    """Operators register base models here (repo id + pinned revision, or a local path)."""

    list_display = ["slug", "display_name", "source", "revision", "tasks", "enabled"]
    list_filter = ["enabled"]
    search_fields = ["slug", "source"]


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["name", "owner", "task", "status", "rows_usable", "sealed_rows", "created_at"]
    list_filter = ["status", "task"]
    search_fields = ["name", "owner__email", "sha256"]


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
