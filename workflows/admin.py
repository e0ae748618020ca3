"""Django admin: the fallback console. Run state is read-only here; changes go
through the admin actions, which call ``workflows.services`` like every other client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from workflows import services
from workflows.models import (
    ApiToken,
    Checkpoint,
    ErrorRecord,
    Run,
    RunEvent,
    StepAttempt,
    WorkflowDefinition,
)


@admin.register(WorkflowDefinition)
class WorkflowDefinitionAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "description", "created_at", "created_by", "checksum_short"]
    list_filter = ["name"]
    search_fields = ["name", "description", "checksum"]
    date_hierarchy = "created_at"
    raw_id_fields = ["created_by"]
    readonly_fields = ["name", "version", "source", "spec", "checksum", "created_at", "created_by"]

    @admin.display(description="checksum")
    def checksum_short(self, obj: WorkflowDefinition) -> str:
        return obj.checksum[:12]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # saved through the API or `manage.py loadworkflows`, which validate


def _bulk(
    verb: Callable[..., Any], done: str
) -> Callable[[admin.ModelAdmin, HttpRequest, QuerySet[Run]], None]:
    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        succeeded, refused = 0, []
        for run in queryset.order_by("created_at"):
            try:
                verb(run.pk, user=request.user)
            except services.ServiceError as exc:
                refused.append(f"{str(run.pk)[:8]}: {exc.message}")
            else:
                succeeded += 1
        if succeeded:
            modeladmin.message_user(request, f"{done} {succeeded} run(s).", messages.SUCCESS)
        if refused:
            modeladmin.message_user(
                request,
                f"Refused {len(refused)} run(s): "
                + "; ".join(refused[:10])
                + (" …" if len(refused) > 10 else ""),
                messages.WARNING,
            )

    return action


class StepAttemptInline(admin.TabularInline):
    model = StepAttempt
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["step", "kind", "number", "status", "started_at", "finished_at", "error"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "workflow_name",
        "workflow_version",
        "status",
        "created_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "workflow_name", "created_at"]
    search_fields = ["id", "workflow_name"]
    date_hierarchy = "created_at"
    raw_id_fields = ["definition", "restarted_from", "created_by"]
    readonly_fields = [
        "id",
        "definition",
        "workflow_name",
        "workflow_version",
        "status",
        "input",
        "output",
        "error",
        "faults",
        "state",
        "state_version",
        "state_checksum",
        "event_seq",
        "due_at",
        "deadline",
        "restarted_from",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    ]
    exclude = ["state_doc"]  # shown read-only as `state`; only the engine writes it
    inlines = [StepAttemptInline]
    actions = [
        "pause_runs",
        "resume_runs",
        "cancel_runs",
        "restart_runs",
        "checkpoint_runs",
        "restore_newest_checkpoint",
        "resume_from_first_failed",
        "migrate_to_latest",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started through services.start_run (API, pages)

    @admin.action(description="Pause selected runs")
    def pause_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.pause, "Paused")(self, request, queryset)

    @admin.action(description="Resume selected runs")
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.resume, "Resumed")(self, request, queryset)

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.cancel, "Cancelled")(self, request, queryset)

    @admin.action(description="Restart selected runs (as new runs)")
    def restart_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.restart, "Restarted")(self, request, queryset)

    @admin.action(description="Take a checkpoint of selected runs")
    def checkpoint_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.take_checkpoint, "Took a checkpoint of")(self, request, queryset)

    @admin.action(description="Restore the newest valid checkpoint (later steps run again)")
    def restore_newest_checkpoint(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        _bulk(services.restore_newest, "Restored")(self, request, queryset)

    @admin.action(description="Resume from the first failed step (keep results before it)")
    def resume_from_first_failed(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        def verb(run_id: Any, user: Any) -> Any:
            step = services.first_failed_step(services.get_run(run_id))
            if step is None:
                raise services.ServiceError(409, "the run has no failed step")
            return services.resume_from(run_id, step, user)

        _bulk(verb, "Resumed from the first failed step")(self, request, queryset)

    @admin.action(description="Migrate paused/failed runs to the latest workflow version")
    def migrate_to_latest(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        def verb(run_id: Any, user: Any) -> Any:
            run = services.get_run(run_id)
            latest = services.get_definition(run.workflow_name)
            return services.migrate(run_id, latest.version, user)

        _bulk(verb, "Migrated")(self, request, queryset)


class ReadOnlyHistory:
    """Attempts, events, checkpoints and errors are the audit trail: admin shows them and
    never edits them (the engine writes them; checkpoint retention prunes them)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StepAttempt)
class StepAttemptAdmin(ReadOnlyHistory, admin.ModelAdmin):
    list_display = [
        "run",
        "step",
        "kind",
        "step_type",
        "number",
        "status",
        "queued_at",
        "started_at",
        "finished_at",
        "worker",
    ]
    list_filter = ["status", "kind", "step_type"]
    search_fields = ["step", "run__id", "worker"]
    date_hierarchy = "queued_at"
    raw_id_fields = ["run"]
    readonly_fields = [f.name for f in StepAttempt._meta.fields]


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyHistory, admin.ModelAdmin):
    list_display = ["run", "seq", "type", "step", "attempt", "at", "actor"]
    list_filter = ["type"]
    search_fields = ["run__id", "step", "type", "actor"]
    date_hierarchy = "at"
    raw_id_fields = ["run"]
    readonly_fields = [f.name for f in RunEvent._meta.fields]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyHistory, admin.ModelAdmin):
    list_display = ["run", "kind", "step", "created_at", "size_bytes", "compressed", "valid"]
    list_filter = ["kind", "valid", "compressed"]
    search_fields = ["run__id", "step", "checksum"]
    date_hierarchy = "created_at"
    raw_id_fields = ["run"]
    exclude = ["data"]
    readonly_fields = [f.name for f in Checkpoint._meta.fields if f.name != "data"]
    actions = ["restore_checkpoint"]

    @admin.action(description="Restore this checkpoint (its run goes back to it)")
    def restore_checkpoint(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        done, refused = 0, []
        for checkpoint in queryset.defer("data").order_by("-created_at"):
            try:
                services.restore(checkpoint.run_id, checkpoint.pk, user=request.user)
            except services.ServiceError as exc:
                refused.append(f"checkpoint {checkpoint.pk}: {exc.message}")
            else:
                done += 1
        if done:
            self.message_user(request, f"Restored {done} checkpoint(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Refused " + "; ".join(refused[:10]), messages.WARNING)


@admin.register(ErrorRecord)
class ErrorRecordAdmin(ReadOnlyHistory, admin.ModelAdmin):
    list_display = [
        "type",
        "short_message",
        "error_class",
        "severity",
        "workflow_name",
        "step",
        "attempt",
        "created_at",
    ]
    list_filter = ["error_class", "severity", "retryable", "workflow_name"]
    search_fields = ["type", "message", "fingerprint", "step", "run__id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["run"]
    readonly_fields = [f.name for f in ErrorRecord._meta.fields]

    @admin.display(description="message")
    def short_message(self, obj: ErrorRecord) -> str:
        return obj.message[:80]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "created_at", "last_used_at"]
    search_fields = ["prefix", "user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issue tokens with `manage.py apitoken`: the raw token is shown once
