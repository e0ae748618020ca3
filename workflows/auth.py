"""Roles and what they may do. Shared by the API, the pages and the commands.

Three roles, each including the one before it:

- ``viewer``   reads everything;
- ``operator`` also starts, pauses, resumes, cancels, restarts and restores runs, retries and
  skips steps, and decides interventions;
- ``admin``    also saves workflows and may inject faults (the debugging permission).

A user's role: a superuser is ``admin``; anyone else has the highest of the Django groups
named ``admin``, ``operator`` and ``viewer`` they belong to, or no role at all.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group

ROLES = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}

# action -> the least role that may do it
ACTIONS: dict[str, str] = {
    "read": "viewer",
    "start": "operator",
    "pause": "operator",
    "resume": "operator",
    "cancel": "operator",
    "restart": "operator",
    "restore": "operator",
    "retry": "operator",
    "skip": "operator",
    "decide": "operator",
    "resume_from": "operator",
    "breakpoint": "operator",
    "checkpoint": "operator",
    "migrate": "operator",
    "save_workflow": "admin",
    "inject_faults": "admin",
}

# How each action reads in a refusal: "your role (viewer) may not <phrase>".
_PHRASES = {
    "read": "read runs",
    "start": "start runs",
    "pause": "pause runs",
    "resume": "resume runs",
    "cancel": "cancel runs",
    "restart": "restart runs",
    "restore": "restore runs from checkpoints",
    "retry": "retry steps",
    "skip": "skip steps",
    "decide": "decide interventions",
    "resume_from": "resume runs from a step",
    "breakpoint": "set breakpoints",
    "checkpoint": "take checkpoints",
    "migrate": "migrate runs to another version",
    "save_workflow": "save workflows",
    "inject_faults": "inject faults",
}


def ensure_role_groups() -> dict[str, Group]:
    """The three role groups, created when missing."""
    return {role: Group.objects.get_or_create(name=role)[0] for role in ROLES}


def role_of(user: Any) -> str | None:
    """``admin``, ``operator``, ``viewer`` or None (anonymous, inactive or no role group)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    if not getattr(user, "is_active", True):
        return None
    if getattr(user, "is_superuser", False):
        return "admin"
    cached = getattr(user, "_flowmend_role", "")
    if cached != "":
        return cached
    names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    role = max(names, key=_RANK.__getitem__) if names else None
    user._flowmend_role = role
    return role


def set_role(user: Any, role: str) -> None:
    """Make ``role`` the user's only role group."""
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    groups = ensure_role_groups()
    user.groups.remove(*[g for name, g in groups.items() if name != role])
    user.groups.add(groups[role])
    # admins also use Django admin (the operators' fall-back): staff with every permission
    if role == "admin" and not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    if hasattr(user, "_flowmend_role"):
        del user._flowmend_role


def can(user: Any, action: str) -> bool:
    """May this user do this action? Unknown actions are refused."""
    needed = ACTIONS.get(action)
    role = role_of(user)
    if needed is None or role is None:
        return False
    return _RANK[role] >= _RANK[needed]


def refusal(user: Any, action: str) -> str:
    """Why ``can(user, action)`` is False, in words for a 403."""
    needed = ACTIONS.get(action, "admin")
    phrase = _PHRASES.get(action, action)
    if action == "inject_faults":
        return "injecting faults needs the admin role (debugging permission)"
    role = role_of(user)
    if role is None:
        return f"your account has no role; {phrase} needs the {needed} role"
    return f"your role ({role}) may not {phrase}; that needs the {needed} role"
