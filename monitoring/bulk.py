"""Bulk actions on runs, by selection or by the list's filter.

A dry run counts first (``preview``); ``execute`` then calls the same ``services`` verb
per run, so each run gets its own audited event with the actor, and collects refusals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from monitoring import run_filters
from workflows import services
from workflows.models import TERMINAL_RUN_STATUSES, Run

BULK_LIMIT = 1000
ACTIVE = ~Q(status__in=TERMINAL_RUN_STATUSES)

# action -> (which runs it applies to, why the others do not, past tense)
ACTIONS: dict[str, tuple[Q, str, str]] = {
    "pause": (ACTIVE & ~Q(status="paused"), "finished or paused", "Paused"),
    "resume": (Q(status="paused"), "not paused", "Resumed"),
    "cancel": (ACTIVE, "already finished", "Cancelled"),
    "retry": (Q(status="failed"), "not failed", "Retried"),
}


@dataclass
class Target:
    """The runs a bulk request names: by selected ids or by the list's filter."""

    action: str
    by_filter: bool
    ids: list[uuid.UUID] = field(default_factory=list)
    filter: run_filters.RunFilter = field(default_factory=run_filters.RunFilter)
    notes: list[str] = field(default_factory=list)

    def matching(self) -> QuerySet[Run]:
        if self.by_filter:
            return self.filter.queryset()
        return Run.objects.filter(pk__in=self.ids).order_by("-created_at", "-id")

    def eligible(self) -> QuerySet[Run]:
        return self.matching().filter(ACTIONS[self.action][0])


def target_from(post: Any) -> Target:
    action = post.get("action", "")
    by_filter = post.get("scope") == "filter"
    target = Target(action=action, by_filter=by_filter)
    if by_filter:
        target.filter = run_filters.parse(post)
        target.notes += target.filter.notes
        return target
    for raw in post.getlist("run"):
        try:
            target.ids.append(uuid.UUID(raw))
        except ValueError:
            target.notes.append(f"Ignored {raw[:40]!r}: not a run id.")
    return target


def preview(target: Target) -> dict[str, Any]:
    matching = target.matching().count()
    eligible = target.eligible()
    count = eligible.count()
    return {
        "matching": matching,
        "count": min(count, BULK_LIMIT),
        "over_limit": count > BULK_LIMIT,
        "limit": BULK_LIMIT,
        "skipped": matching - count,
        "skip_reason": ACTIONS[target.action][1],
        "sample": list(eligible[:20]),
        "done_word": ACTIONS[target.action][2],
    }


def execute(target: Target, user: Any) -> tuple[int, list[str]]:
    """Apply the action to each eligible run: (how many done, refusals with reasons)."""
    done, refusals = 0, []
    ids = list(target.eligible().values_list("pk", flat=True)[:BULK_LIMIT])
    for run_id in ids:
        try:
            _apply(target.action, run_id, user)
        except services.ServiceError as exc:
            refusals.append(f"{str(run_id)[:8]}: {exc.message}")
        else:
            done += 1
    return done, refusals


def _apply(action: str, run_id: Any, user: Any) -> None:
    if action == "pause":
        services.pause(run_id, user=user)
    elif action == "resume":
        services.resume(run_id, user=user)
    elif action == "cancel":
        services.cancel(run_id, user=user)
    else:
        run = services.get_run(run_id)
        failed = [n for n, st in run.state.get("steps", {}).items() if st.get("status") == "failed"]
        if not failed:
            raise services.ServiceError(409, "no failed step to retry")
        for step in failed:
            services.retry_step(run_id, step, user=user)
