"""The verbs everyone calls: the API, pages, admin actions, commands and interventions.

Every verb checks its input, goes through ``store.apply`` (one transaction), and
raises ``ServiceError`` with an HTTP-ish status and a message that says why.
"""

from __future__ import annotations

import time
from typing import Any

import jsonschema
from django.db import transaction
from django.utils import timezone

from interventions.models import Intervention
from workflows import engine, store
from workflows import spec as spec_mod
from workflows.models import Checkpoint, Run, WorkflowDefinition
from workflows.serializers import step_order


class ServiceError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


class NotFound(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


def _actor(user: Any) -> str:
    return getattr(user, "username", "") or (str(user) if user else "system")


def _user(user: Any) -> Any:
    return user if getattr(user, "pk", None) else None


# --------------------------------------------------------------------------- workflows


def save_workflow(
    text: str, content_type: str | None = None, user: Any = None
) -> tuple[WorkflowDefinition, bool]:
    """Validate and save. Same text as the latest version: (that version, False)."""
    try:
        parsed = spec_mod.parse_workflow(text, content_type)
    except spec_mod.SpecError as exc:
        raise ServiceError(400, "the workflow is not valid", exc.errors) from exc
    name = parsed.spec.name
    with transaction.atomic():
        latest = (
            WorkflowDefinition.objects.select_for_update()
            .filter(name=name)
            .order_by("-version")
            .first()
        )
        if latest is not None and latest.checksum == parsed.checksum:
            return latest, False
        definition = WorkflowDefinition.objects.create(
            name=name,
            version=(latest.version + 1) if latest else 1,
            description=parsed.spec.description or "",
            source=text,
            spec=parsed.data,
            checksum=parsed.checksum,
            created_by=_user(user),
        )
    return definition, True


def get_definition(name: str, version: int | None = None) -> WorkflowDefinition:
    qs = WorkflowDefinition.objects.filter(name=name)
    definition = qs.filter(version=version).first() if version else qs.order_by("-version").first()
    if definition is None:
        what = f"workflow {name!r}" + (f" version {version}" if version else "")
        raise NotFound(f"{what} does not exist")
    return definition


# --------------------------------------------------------------------------- runs


def _check_faults(faults: Any) -> list[dict[str, Any]]:
    if faults is None:
        return []
    errors = []
    if not isinstance(faults, list):
        raise ServiceError(
            400, "faults must be a list", [{"path": "faults", "message": "must be a list"}]
        )
    for i, fault in enumerate(faults):
        if not isinstance(fault, dict) or not isinstance(fault.get("step"), str):
            errors.append({"path": f"faults[{i}].step", "message": "required: a step name"})
            continue
        attempts = fault.get("attempts")
        if attempts is not None and (
            not isinstance(attempts, list)
            or not all(isinstance(a, int) and a >= 1 for a in attempts)
        ):
            errors.append(
                {"path": f"faults[{i}].attempts", "message": "must be a list of integers >= 1"}
            )
    if errors:
        raise ServiceError(400, "faults are not valid", errors)
    return faults


def start_run(
    workflow: str,
    version: int | None = None,
    input: Any = None,
    faults: Any = None,
    user: Any = None,
    restarted_from: Run | None = None,
) -> Run:
    definition = get_definition(workflow, version)
    data = {} if input is None else input
    spec = store.spec_for(definition)
    if spec.inputs and isinstance(data, dict):
        data = _with_defaults(spec.inputs, data)
    if spec.inputs:
        validator = jsonschema.Draft202012Validator(spec.inputs)
        problems = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        if problems:
            raise ServiceError(
                400,
                "the input does not match the workflow's inputs schema",
                [
                    {
                        "path": "input"
                        + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.path),
                        "message": e.message,
                    }
                    for e in problems
                ],
            )
    fault_list = _check_faults(faults)
    names = {s.name for s, _ in spec.all_steps()}
    unknown = [f["step"] for f in fault_list if f["step"].split("[", 1)[0] not in names]
    if unknown:
        raise ServiceError(
            400,
            "faults name steps that are not in the workflow",
            [{"path": "faults", "message": f"unknown step {u!r}"} for u in unknown],
        )
    with transaction.atomic():
        run = Run.objects.create(
            definition=definition,
            workflow_name=definition.name,
            workflow_version=definition.version,
            input=data,
            faults=fault_list,
            state=engine.new_state(),
            created_by=_user(user),
            restarted_from=restarted_from,
        )
        run_id = str(run.pk)
        store.apply(
            run.pk,
            lambda r: engine.StartRun(time.time(), run_id, data, tuple(fault_list)),
            _actor(user),
        )
    run.refresh_from_db()
    return run


def _with_defaults(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Fill the top-level `default`s of an object schema into the input."""
    properties = schema.get("properties") if schema.get("type", "object") == "object" else None
    if not isinstance(properties, dict):
        return data
    filled = dict(data)
    for key, prop in properties.items():
        if key not in filled and isinstance(prop, dict) and "default" in prop:
            filled[key] = prop["default"]
    return filled


def get_run(run_id: Any) -> Run:
    try:
        return Run.objects.select_related("definition").get(pk=run_id)
    except (Run.DoesNotExist, ValueError, Exception) as exc:
        if isinstance(exc, Run.DoesNotExist | ValueError) or "UUID" in str(exc):
            raise NotFound(f"run {run_id} does not exist") from exc
        raise


def _apply(run_id: Any, make: Any, user: Any) -> Run:
    get_run(run_id)
    try:
        applied = store.apply(run_id, make, _actor(user))
    except engine.EngineError as exc:
        raise ServiceError(409, str(exc)) from exc
    except store.RunNotFound as exc:
        raise NotFound(f"run {run_id} does not exist") from exc
    assert applied is not None
    return applied.run


def pause(run_id: Any, user: Any = None) -> Run:
    return _apply(run_id, lambda r: engine.PauseRun(time.time()), user)


def resume(run_id: Any, user: Any = None) -> Run:
    return _apply(run_id, lambda r: engine.ResumeRun(time.time()), user)


def cancel(run_id: Any, user: Any = None, reason: str = "") -> Run:
    why = reason or f"cancelled by {_actor(user)}"
    return _apply(run_id, lambda r: engine.CancelRun(time.time(), why), user)


def retry_step(run_id: Any, step: str, user: Any = None) -> Run:
    _require_step(run_id, step)
    with transaction.atomic():
        _answer_interventions(run_id, step, "retry", user, None)
        return _apply(run_id, lambda r: engine.RetryStep(time.time(), step), user)


def skip_step(run_id: Any, step: str, output: Any = None, user: Any = None) -> Run:
    _require_step(run_id, step)
    with transaction.atomic():
        _answer_interventions(run_id, step, "skip", user, output)
        return _apply(run_id, lambda r: engine.SkipStep(time.time(), step, output), user)


def _count_approval(intervention: Intervention, user: Any, comment: str) -> bool:
    """Four eyes: record one approval; True when enough different people approved.

    The person who started the run never approves their own run, and nobody counts twice.
    """
    with transaction.atomic():
        locked = Intervention.objects.select_for_update().get(pk=intervention.pk)
        if locked.status != "open":
            raise ServiceError(409, f"intervention {locked.pk} is already {locked.status}")
        user_id = getattr(user, "pk", None)
        requester = Run.objects.values_list("created_by_id", flat=True).get(pk=locked.run_id)
        if user_id is not None and user_id == requester:
            raise ServiceError(
                403, "you started this run: its approval needs other people (four eyes)"
            )
        if any(a.get("user_id") == user_id for a in locked.approvals):
            raise ServiceError(409, "you have already approved; another person must approve too")
        approvals = [
            *locked.approvals,
            {"user_id": user_id, "by": _actor(user), "at": timezone.now().isoformat(),
             "comment": comment},
        ]  # fmt: skip
        Intervention.objects.filter(pk=locked.pk).update(approvals=approvals)
        enough = len(approvals) >= locked.required_approvals
    if not enough:
        store.record_event(
            intervention.run_id,
            "intervention.approved",
            _actor(user),
            {
                "step": intervention.step,
                "approvals": len(approvals),
                "required": locked.required_approvals,
            },
        )
    return enough


def _answer_interventions(run_id: Any, step: str, action: str, user: Any, output: Any) -> None:
    """Retrying or skipping a step answers its open escalation: record who did it."""
    Intervention.objects.filter(run_id=run_id, step=step, status="open").update(
        status="decided",
        decided_at=timezone.now(),
        decided_by=_user(user),
        action=action,
        output=output,
        comment=f"{action} from the run's step actions",
    )


def _require_step(run_id: Any, step: str) -> None:
    run = get_run(run_id)
    if step not in run.state.get("steps", {}):
        names = {s.name for s, _ in store.spec_for(run.definition).all_steps()}
        if step.split("[", 1)[0] in names:
            raise ServiceError(409, f"step {step!r} has not been reached in this run")
        raise NotFound(f"step {step!r} does not exist in workflow {run.workflow_name}")


def restart(run_id: Any, user: Any = None, input: Any = None) -> Run:
    """A new run of the same workflow version, from a clean state, linked to the old one."""
    old = get_run(run_id)
    new = start_run(
        old.workflow_name,
        old.workflow_version,
        old.input if input is None else input,
        None,
        user,
        restarted_from=old,
    )
    store.record_event(
        old.pk,
        "run.restarted",
        _actor(user),
        {"new_run": str(new.pk), "input_edited": input is not None and input != old.input},
    )
    return new


# --------------------------------------------------------------------------- interventions


def decide(
    intervention_id: int,
    action: str,
    user: Any = None,
    output: Any = None,
    comment: str = "",
    checkpoint: Any = None,
) -> Intervention:
    """Carry out an operator's decision. restore/restart are done here, the rest by the engine."""
    try:
        intervention = Intervention.objects.get(pk=intervention_id)
    except (Intervention.DoesNotExist, ValueError) as exc:
        raise NotFound(f"intervention {intervention_id} does not exist") from exc
    if intervention.status != "open":
        raise ServiceError(409, f"intervention {intervention_id} is already {intervention.status}")
    if action not in intervention.options:
        raise ServiceError(
            400,
            f"{action!r} is not an option here; choose one of {', '.join(intervention.options)}",
            [{"path": "action", "message": f"must be one of {intervention.options}"}],
        )
    by = _actor(user)
    four_eyes = action == "approve" and intervention.required_approvals > 1
    if four_eyes and not _count_approval(intervention, user, comment or ""):
        intervention.refresh_from_db()
        return intervention  # recorded; more approvers needed

    def record(run: Run) -> None:
        updated = Intervention.objects.filter(pk=intervention.pk, status="open").update(
            status="decided",
            decided_at=timezone.now(),
            decided_by=_user(user),
            action=action,
            comment=comment or "",
            output=output,
        )
        if not updated:
            raise ServiceError(409, f"intervention {intervention_id} was decided meanwhile")

    if action in ("restore", "restart"):
        with transaction.atomic():
            record(intervention.run)
            if action == "restore":
                if checkpoint is None:
                    newest = (
                        intervention.run.checkpoints.filter(valid=True)
                        .order_by("-created_at", "-pk")
                        .first()
                    )
                    if newest is None:
                        raise ServiceError(409, "the run has no valid checkpoint to restore")
                    checkpoint = newest.pk
                restore(intervention.run_id, checkpoint, user)
            else:
                new_run = restart(intervention.run_id, user)
                cancel(intervention.run_id, user, f"restarted as run {new_run.pk}")
        intervention.refresh_from_db()
        return intervention
    try:
        store.apply(
            intervention.run_id,
            lambda r: engine.InterventionDecided(
                time.time(), intervention.step, action, output, by, comment or ""
            ),
            by,
            before=record,
        )
    except engine.EngineError as exc:
        raise ServiceError(409, str(exc)) from exc
    intervention.refresh_from_db()
    return intervention


# --------------------------------------------------------------------------- recovery


def restore(run_id: Any, checkpoint_id: Any, user: Any = None) -> Run:
    """Continue the run from one of its checkpoints; later steps run again."""
    run = get_run(run_id)
    try:
        checkpoint = Checkpoint.objects.get(pk=int(checkpoint_id))
    except (Checkpoint.DoesNotExist, TypeError, ValueError) as exc:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist") from exc
    if checkpoint.run_id != run.pk:
        raise ServiceError(
            400,
            f"checkpoint {checkpoint.pk} belongs to run {checkpoint.run_id}, not to run {run.pk}",
            [{"path": "checkpoint", "message": "belongs to another run"}],
        )
    try:
        state = store.load_checkpoint(checkpoint)
    except store.CheckpointInvalid as exc:
        raise ServiceError(409, str(exc), [{"path": "checkpoint", "message": str(exc)}]) from exc
    unmapped = engine.unmapped_steps(store.spec_for(run.definition), state)
    if unmapped:
        raise ServiceError(
            409,
            f"the checkpoint has steps that version {run.workflow_version} does not: "
            + ", ".join(unmapped),
        )
    return _apply(
        run.pk, lambda r: engine.RestoreState(time.time(), state, str(checkpoint.pk)), user
    )


def restore_newest(run_id: Any, user: Any = None) -> Run:
    """Restore the newest checkpoint that verifies; corrupt ones are marked and passed over."""
    run = get_run(run_id)
    for checkpoint in (
        run.checkpoints.filter(valid=True).defer("data").order_by("-created_at", "-pk")
    ):
        try:
            return restore(run.pk, checkpoint.pk, user)
        except ServiceError as exc:
            if "corrupt" not in exc.message:
                raise
    raise ServiceError(409, "the run has no valid checkpoint to restore")


def first_failed_step(run: Run) -> str | None:
    """The earliest-started failed step a resume-from can start at, or None."""
    failed = [
        (st.get("started") or 0, name)
        for name, st in run.state.get("steps", {}).items()
        if st.get("status") == "failed"
        and st.get("kind") not in ("handler", "compensation", "fallback")
    ]
    return min(failed)[1] if failed else None


def resume_from(run_id: Any, step: str, user: Any = None) -> Run:
    """Run ``step`` and everything downstream of it again, keeping upstream results."""
    _require_step(run_id, step)
    return _apply(run_id, lambda r: engine.ResumeFromStep(time.time(), step), user)


def preview_resume_from(run_id: Any, step: str) -> dict[str, list[str]]:
    """What resume-from would do: which steps run again, which results are kept."""
    run = get_run(run_id)
    _require_step(run_id, step)
    again = engine.downstream_of(store.spec_for(run.definition), run.state, step)
    states = run.state["steps"]
    order = step_order(run)  # the workflow's order
    kept = [n for n in order if n not in again and states[n]["status"] == "succeeded"]
    return {"run_again": [n for n in order if n in again], "kept": kept}


def set_breakpoint(run_id: Any, step: str, enabled: bool = True, user: Any = None) -> Run:
    run = get_run(run_id)
    names = {s.name for s, _ in store.spec_for(run.definition).all_steps()}
    if step.split("[", 1)[0] not in names:
        raise ServiceError(
            404,
            f"step {step!r} does not exist in workflow {run.workflow_name} v{run.workflow_version}",
            [{"path": "step", "message": "not a step of the workflow"}],
        )
    return _apply(run_id, lambda r: engine.SetBreakpoint(time.time(), step, enabled), user)


def take_checkpoint(run_id: Any, user: Any = None) -> Checkpoint:
    run = _apply(run_id, lambda r: engine.ManualCheckpoint(time.time()), user)
    return run.checkpoints.order_by("-created_at", "-pk").first()  # type: ignore[return-value]


def migrate(run_id: Any, version: int, user: Any = None) -> Run:
    """Move a paused or failed run to another version of its workflow."""
    run = get_run(run_id)
    if run.status not in ("paused", "failed"):
        raise ServiceError(
            409, f"only a paused or failed run can be migrated; this one is {run.status}"
        )
    target = get_definition(run.workflow_name, version)
    if target.pk == run.definition_id:
        raise ServiceError(409, f"the run is already on version {version}")
    unmapped = engine.unmapped_steps(store.spec_for(target), run.state)
    if unmapped:
        raise ServiceError(
            409,
            f"these steps of the run do not exist in version {version}: {', '.join(unmapped)}",
            [{"path": f"steps.{n}", "message": "not in the target version"} for n in unmapped],
        )
    from_version = run.workflow_version

    def switch(r: Run) -> None:
        r.definition = target
        r.workflow_version = target.version

    try:
        applied = store.apply(
            run.pk,
            lambda r: engine.MigrateVersion(time.time(), from_version, target.version),
            _actor(user),
            before=switch,
        )
    except engine.EngineError as exc:
        raise ServiceError(409, str(exc)) from exc
    assert applied is not None
    return applied.run


def state_history(run_id: Any) -> list[dict[str, Any]]:
    """Each state version: what changed it, who or what, and from which version."""
    run = get_run(run_id)
    history: dict[int, dict[str, Any]] = {}
    for ev in run.events.order_by("seq").values("state_version", "type", "step", "actor", "at"):
        entry = history.setdefault(
            ev["state_version"],
            {
                "version": ev["state_version"],
                "from_version": max(ev["state_version"] - 1, 0),
                "at": ev["at"],
                "by": ev["actor"] or "engine",
                "changes": [],
            },
        )
        entry["changes"].append(f"{ev['type']} {ev['step']}".strip())
    return list(history.values())


def checkpoint_state(run_id: Any, checkpoint_id: Any) -> dict[str, Any]:
    run = get_run(run_id)
    checkpoint = Checkpoint.objects.filter(pk=checkpoint_id, run=run).first()
    if checkpoint is None:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist in run {run.pk}")
    try:
        return store.load_checkpoint(checkpoint)
    except store.CheckpointInvalid as exc:
        raise ServiceError(409, str(exc)) from exc
