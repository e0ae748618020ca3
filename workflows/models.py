"""Persistence of workflows, runs, attempts, events, checkpoints and errors.

Only `workflows.store` writes run state; everything else reads.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import models


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    AWAITING_INTERVENTION = "awaiting_intervention"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the form checksums are taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


TERMINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "compensated"})


class AttemptStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowDefinition(models.Model):
    """One saved version of a workflow. Runs are pinned to a version."""

    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True, default="")
    source = models.TextField()
    spec = models.JSONField(help_text="The workflow as parsed data (validated).")
    checksum = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="workflow_name_version")
        ]
        ordering = ["name", "-version"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    definition = models.ForeignKey(
        WorkflowDefinition, on_delete=models.PROTECT, related_name="runs"
    )
    workflow_name = models.CharField(max_length=100)
    workflow_version = models.PositiveIntegerField()
    status = models.CharField(max_length=32, choices=RunStatus.choices, default=RunStatus.PENDING)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    faults = models.JSONField(default=list, blank=True)
    state_doc = models.TextField(
        default="{}", blank=True, help_text="The engine's state document, canonical JSON."
    )
    state_version = models.PositiveIntegerField(default=0)
    state_checksum = models.CharField(
        max_length=64, blank=True, default="", help_text="sha256 of the canonical JSON state."
    )
    event_seq = models.PositiveIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True, help_text="Earliest durable timer.")
    deadline = models.DateTimeField(null=True, blank=True, help_text="Whole-run timeout.")
    restarted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="restarts"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="run_status_created"),
            models.Index(fields=["workflow_name", "-created_at"], name="run_workflow_created"),
            models.Index(
                fields=["due_at"], name="run_due", condition=models.Q(due_at__isnull=False)
            ),
            models.Index(
                fields=["finished_at"],
                include=["status", "id"],
                name="run_finished",
                condition=models.Q(finished_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def state(self) -> dict[str, Any]:
        """The engine's state document (parsed once per text; treat it as read-only)."""
        cached = self.__dict__.get("_state_cache")
        if cached is None or cached[0] is not self.state_doc:
            cached = (self.state_doc, json.loads(self.state_doc or "{}"))
            self.__dict__["_state_cache"] = cached
        value: dict[str, Any] = cached[1]
        return value

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.state_doc = canonical_json(value).decode()
        self.__dict__["_state_cache"] = (self.state_doc, value)


class StepAttempt(models.Model):
    """One execution of one step. Claimed with a lease; reported exactly once."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    step = models.CharField(max_length=250)
    kind = models.CharField(max_length=20, default="action")
    step_type = models.CharField(max_length=50)
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=AttemptStatus.choices, default="queued")
    input = models.JSONField(null=True, blank=True)
    fault = models.JSONField(null=True, blank=True, help_text="Injected failure, for debugging.")
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    timeout_seconds = models.FloatField(default=300)
    queued_at = models.DateTimeField()
    not_before = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step", "number"], name="attempt_unique")
        ]
        indexes = [
            models.Index(
                fields=["status", "lease_until"],
                name="attempt_active",
                condition=models.Q(status__in=["queued", "running"]),
            ),
            models.Index(
                fields=["finished_at"],
                include=["status"],
                name="attempt_finished",
                condition=models.Q(finished_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step}#{self.number} ({self.status})"

    @property
    def duration_ms(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds() * 1000
        return None


class RunEvent(models.Model):
    """Append-only history of a run; `seq` grows by one per run."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=50)
    step = models.CharField(max_length=250, blank=True, default="")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    at = models.DateTimeField()
    actor = models.CharField(max_length=150, blank=True, default="", help_text="Who or what.")
    state_version = models.PositiveIntegerField(
        default=0, help_text="The run's state version this event produced."
    )
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="event_run_seq")]

    def __str__(self) -> str:
        return f"{self.seq} {self.type} {self.step}"


class CheckpointKind(models.TextChoices):
    STEP_START = "step_start"
    STEP_COMPLETE = "step_complete"
    CRITICAL_POINT = "critical_point"
    ERROR_RECOVERY = "error_recovery"
    MANUAL = "manual"


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.CharField(max_length=250, blank=True, default="")
    kind = models.CharField(max_length=20, choices=CheckpointKind.choices)
    data = models.BinaryField(help_text="Canonical JSON of the run state, zlib above the limit.")
    checksum = models.CharField(max_length=64, help_text="sha256 of the canonical JSON.")
    size_bytes = models.PositiveIntegerField()
    compressed = models.BooleanField(default=False)
    valid = models.BooleanField(default=True)
    state_version = models.PositiveIntegerField(default=0)
    workflow_version = models.PositiveIntegerField(default=1)
    schema_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["run", "-created_at"]
        indexes = [models.Index(fields=["run", "-created_at"], name="checkpoint_run_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.step} ({self.created_at:%Y-%m-%d %H:%M:%S})"


class ErrorRecord(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="errors")
    step = models.CharField(max_length=250, blank=True, default="")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    error_class = models.CharField(max_length=30, default="step_error")
    severity = models.CharField(max_length=10, default="medium")
    retryable = models.BooleanField(default=True)
    type = models.CharField(max_length=200)
    message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    fingerprint = models.CharField(max_length=64, db_index=True)
    workflow_name = models.CharField(max_length=100, default="")
    recovery = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["error_class", "-created_at"], name="error_class_created"),
            models.Index(
                fields=["fingerprint", "-created_at"],
                include=["run_id", "id"],
                name="error_fingerprint_created",
            ),
            models.Index(fields=["created_at"], name="error_created"),
        ]

    def __str__(self) -> str:
        return f"{self.type}: {self.message[:60]}"


def _hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token. Only its sha256 is stored; the raw token is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user: object) -> tuple[ApiToken, str]:
        raw = "fm_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, key_hash=_hash_token(raw), prefix=raw[:8])
        return token, raw

    @classmethod
    def lookup(cls, raw: str) -> ApiToken | None:
        return cls.objects.select_related("user").filter(key_hash=_hash_token(raw)).first()
