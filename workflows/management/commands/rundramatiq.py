import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run Dramatiq worker processes for Flowmend's steps (needs BROKER_URL)."

    def add_arguments(self, parser):
        parser.add_argument("--processes", "-p", type=int, default=os.cpu_count() or 1)
        parser.add_argument("--threads", "-t", type=int, default=settings.FLOWMEND_WORKER_THREADS)

    def handle(self, *args, **options):
        if not settings.BROKER_URL:
            self.stderr.write(
                "BROKER_URL is not set: in embedded mode `manage.py serve` runs the workers."
            )
            sys.exit(2)
        argv = [
            sys.executable,
            "-m",
            "dramatiq",
            "flowmend.dramatiq_entry",
            "--processes",
            str(options["processes"]),
            "--threads",
            str(options["threads"]),
            "--queues",
            "flowmend",
        ]
        env = dict(os.environ)
        # An idle Redis consumer backs off up to this long (ms) between polls; Dramatiq's
        # default of 1000 adds up to a second to the first step after a quiet spell.
        env.setdefault("dramatiq_worker_timeout", "100")
        os.execve(sys.executable, argv, env)
