"""Issue an API token: ``manage.py apitoken USERNAME [--create] [--role ROLE]``.

The token is printed alone as the last line of stdout (only its hash is stored), so
``TOKEN=$(python manage.py apitoken alice)`` works.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from workflows import auth
from workflows.models import ApiToken


class Command(BaseCommand):
    help = "Print a new API token for USERNAME (--create makes the user first)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--create",
            action="store_true",
            help="create the user if it does not exist (role: --role, default operator)",
        )
        parser.add_argument(
            "--role",
            choices=auth.ROLES,
            default=None,
            help="the user's role; sets it for an existing user too",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        role: str | None = options["role"]
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not options["create"]:
                    raise CommandError(
                        f"user {username!r} does not exist; add --create to create it"
                    )
                user = User(username=username)
                user.set_unusable_password()
                user.save()
                role = role or "operator"
                self.stderr.write(f"created user {username} with role {role}")
            if role is not None:
                auth.set_role(user, role)
            _, raw = ApiToken.issue(user)
        self.stderr.write(f"token for {username} (role: {auth.role_of(user) or 'none'}):")
        self.stdout.write(raw)
