from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts.models import ApiKey, ExpertProfile, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = [
        "email", "display_name", "email_verified_at", "is_expert", "is_buyer", "is_staff",
        "is_active",
    ]  # fmt: skip
    list_filter = ["is_expert", "is_buyer", "is_staff", "is_active", "groups"]
    search_fields = ["email", "display_name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "display_name")}),
        ("Roles", {"fields": ("is_expert", "is_buyer")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
        ("Email verification", {"fields": ("verified_email", "email_verified_at")}),
    )
    # Proven by the user's link (or an operator's `create_api_key --verify-email`).
    readonly_fields = ["verified_email", "email_verified_at"]
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(ExpertProfile)
class ExpertProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "headline", "verified", "verified_by", "verified_at"]
    list_filter = ["verified"]
    search_fields = ["user__email", "headline"]
    # Verification is a moderation action, audited: listings.admin adds it.
    readonly_fields = ["verified", "verified_by", "verified_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name", "prefix", "user", "scopes", "rate_limit_per_minute", "created_at",
        "last_used_at", "revoked_at",
    ]  # fmt: skip
    search_fields = ["prefix", "user__email", "name"]
    readonly_fields = [f.name for f in ApiKey._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # keys are created by their owner, who alone sees the secret
