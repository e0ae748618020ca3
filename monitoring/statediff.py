"""Differences between two run states (the state inspector) and two texts (YAML versions)."""

from __future__ import annotations

import difflib
from html import escape
from typing import Any

_MISSING = object()


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def diff_states(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Every difference from ``a`` to ``b``: ``{"path", "change", "old", "new"}``.

    ``change`` is ``added``, ``removed`` or ``changed``; paths read ``steps.charge.status``
    or ``completed[2]``. Dicts are compared key by key (sorted), lists index by index,
    anything else by equality (``1`` and ``True`` differ: types count).
    """
    out: list[dict[str, Any]] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _diff_child(out, _path(path, key), a.get(key, _MISSING), b.get(key, _MISSING))
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _diff_child(
                out,
                _path(path, i),
                a[i] if i < len(a) else _MISSING,
                b[i] if i < len(b) else _MISSING,
            )
    elif type(a) is not type(b) or a != b:
        out.append({"path": path, "change": "changed", "old": a, "new": b})
    return out


def _diff_child(out: list[dict[str, Any]], path: str, old: Any, new: Any) -> None:
    if old is _MISSING:
        out.append({"path": path, "change": "added", "old": None, "new": new})
    elif new is _MISSING:
        out.append({"path": path, "change": "removed", "old": old, "new": None})
    else:
        out.extend(diff_states(old, new, path))


def text_diff(
    a_text: str, b_text: str, a_label: str = "before", b_label: str = "after", context: int = 3
) -> str:
    """An HTML table of a unified line diff (difflib), every line escaped.

    Rows carry the class ``add``, ``del``, ``ctx`` or ``hunk`` and inline colors; the two
    number columns give the line in each text. Identical texts give a one-row table.
    """
    a_lines, b_lines = a_text.splitlines(), b_text.splitlines()
    colors = {"add": "#dcfce7", "del": "#fee2e2", "hunk": "#eff6ff", "ctx": "transparent"}
    rows = [
        f'<table class="text-diff"><thead><tr><th>{escape(a_label)}</th><th>{escape(b_label)}</th>'
        "<th></th></tr></thead><tbody>"
    ]

    def row(kind: str, left: Any, right: Any, text: str) -> None:
        rows.append(
            f'<tr class="{kind}" style="background:{colors[kind]}"><td class="num">{left}</td>'
            f'<td class="num">{right}</td><td><code>{escape(text)}</code></td></tr>'
        )

    matcher = difflib.SequenceMatcher(None, a_lines, b_lines, autojunk=False)
    groups = list(matcher.get_grouped_opcodes(context))
    if not groups:
        row("ctx", "", "", "(no differences)")
    for group in groups:
        i1, j1 = group[0][1], group[0][3]
        i2, j2 = group[-1][2], group[-1][4]
        row("hunk", "", "", f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                for k in range(a2 - a1):
                    row("ctx", a1 + k + 1, b1 + k + 1, "  " + a_lines[a1 + k])
                continue
            for k in range(a1, a2):
                row("del", k + 1, "", "- " + a_lines[k])
            for k in range(b1, b2):
                row("add", "", k + 1, "+ " + b_lines[k])
    rows.append("</tbody></table>")
    return "".join(rows)
