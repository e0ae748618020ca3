import signal
import threading

from django.core.management.base import BaseCommand

from workflows import sweeper


class Command(BaseCommand):
    help = (
        "Run the sweeper: requeue lost work, fire timers, enforce timeouts (one active at a time)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None, help="seconds between passes")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, **options):
        if options["once"]:
            self.stdout.write(str(sweeper.sweep_once()))
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("sweeper running; Ctrl-C to stop")
        sweeper.run_forever(stop, options["interval"])
