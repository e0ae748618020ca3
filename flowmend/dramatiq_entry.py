"""Module the `dramatiq` CLI imports in each worker process: set up Django, load actors."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmend.settings")

import django  # noqa: E402

django.setup()

from workflows import actors  # noqa: E402,F401
