"""Save workflow files: ``manage.py loadworkflows PATH...`` (same rules as the API).

PATHs are files or directories (searched recursively for *.yaml, *.yml and *.json). Each
file prints ``name vN (created|unchanged)``; an invalid file prints every error with its
path, and the command exits non-zero once all files have been processed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services

SUFFIXES = (".yaml", ".yml", ".json")


def workflow_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The files to load, in order, and the problems with the given paths."""
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
            )
            if not found:
                problems.append(f"{raw}: no *.yaml, *.yml or *.json files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{raw}: no such file or directory")
    return files, problems


class Command(BaseCommand):
    help = "Save workflow files (YAML or JSON); directories are searched recursively."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        files, problems = workflow_files(options["paths"])
        for problem in problems:
            self.stderr.write(problem)
        failed = len(problems)
        for path in files:
            if not self.load(path):
                failed += 1
        if failed:
            raise CommandError(f"{failed} of {len(files) + len(problems)} paths failed")

    def load(self, path: Path) -> bool:
        content_type = "application/json" if path.suffix.lower() == ".json" else "application/yaml"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.stderr.write(f"{path}: cannot read: {exc}")
            return False
        try:
            definition, created = services.save_workflow(text, content_type)
        except services.ServiceError as exc:
            self.stderr.write(f"{path}: {exc.message}")
            for error in exc.errors:
                self.stderr.write(f"{path}: {error.get('path')}: {error.get('message')}")
            return False
        state = "created" if created else "unchanged"
        self.stdout.write(f"{definition.name} v{definition.version} ({state})")
        return True
