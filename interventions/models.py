"""The human loop: what needs a person, the options, and who decided what."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Intervention(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        DECIDED = "decided"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    run = models.ForeignKey("workflows.Run", on_delete=models.CASCADE, related_name="interventions")
    step = models.CharField(max_length=250, blank=True, default="")
    kind = models.CharField(max_length=20, default="approval", help_text="approval or escalation")
    reason = models.TextField()
    prompt = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    options = models.JSONField(default=list)
    required_approvals = models.PositiveSmallIntegerField(
        default=1, help_text="settings.interventions.approvals: 2 = four eyes."
    )
    approvals = models.JSONField(
        default=list, blank=True, help_text="Approvals so far: [{user_id, by, at, comment}]."
    )
    context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=20, blank=True, default="")
    comment = models.TextField(blank=True, default="")
    output = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="intervention_status")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.step} ({self.status})"
