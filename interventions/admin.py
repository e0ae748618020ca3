from __future__ import annotations

from django.contrib import admin

from interventions.models import Intervention


@admin.register(Intervention)
class InterventionAdmin(admin.ModelAdmin):
    """Read-only here: decide through the console or the API so the run is told."""

    list_display = [
        "id",
        "run",
        "step",
        "kind",
        "status",
        "short_reason",
        "created_at",
        "expires_at",
        "decided_by",
        "action",
    ]
    list_filter = ["status", "kind", "action"]
    search_fields = ["reason", "step", "run__id", "comment"]
    date_hierarchy = "created_at"
    raw_id_fields = ["run", "decided_by"]
    readonly_fields = [f.name for f in Intervention._meta.fields]

    @admin.display(description="reason")
    def short_reason(self, obj: Intervention) -> str:
        return obj.reason[:80]

    def has_add_permission(self, request: object) -> bool:
        return False
