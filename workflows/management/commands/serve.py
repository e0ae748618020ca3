"""Everything in one process, for a first look: web, workers and sweeper."""

import secrets
import threading
from pathlib import Path

import dramatiq
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from workflows import services, sweeper


class Command(BaseCommand):
    help = "Run Flowmend in one process: web (daphne), in-process workers and the sweeper."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--threads", type=int, default=settings.FLOWMEND_WORKER_THREADS)
        parser.add_argument("--no-examples", action="store_true", help="don't load examples/")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_examples"]:
            self._load_examples()
        password = self._ensure_login()
        worker = dramatiq.Worker(
            dramatiq.get_broker(),
            queues={"flowmend"},
            worker_threads=options["threads"],
            worker_timeout=100,
        )
        worker.start()
        stop = threading.Event()
        sweep = threading.Thread(target=sweeper.run_forever, args=(stop,), daemon=True)
        sweep.start()
        host, _, port = options["addrport"].rpartition(":")
        self.stdout.write(
            self.style.SUCCESS(
                f"\nFlowmend is running: open http://{host or '127.0.0.1'}:{port}/\n"
                f"  log in as admin / {password}\n"
                f"  database: {settings.DATABASES['default']['NAME']}\n"
                f"  broker: {settings.BROKER_URL or 'in-process'}, "
                f"{options['threads']} worker threads, sweeper on\n"
            )
        )
        try:
            call_command("runserver", options["addrport"], use_reloader=False, use_threading=True)
        finally:
            stop.set()
            worker.stop()

    def _load_examples(self):
        for path in sorted(Path(settings.BASE_DIR, "examples").glob("*.y*ml")):
            try:
                definition, created = services.save_workflow(path.read_text())
                state = "loaded" if created else "unchanged"
                self.stdout.write(f"example {definition.name} v{definition.version} {state}")
            except services.ServiceError as exc:
                self.stderr.write(f"{path.name}: {exc.message}")
                for e in exc.errors:
                    self.stderr.write(f"  {e['path']}: {e['message']}")

    def _ensure_login(self) -> str:
        User = get_user_model()
        secret_file = Path(settings.DATA_DIR) / "admin-password.txt"
        user = User.objects.filter(username="admin").first()
        if user is not None and secret_file.exists():
            return secret_file.read_text().strip()
        password = secrets.token_urlsafe(9)
        if user is None:
            User.objects.create_superuser("admin", "admin@localhost", password)
        else:
            user.set_password(password)
            user.save()
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        return password
