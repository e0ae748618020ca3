"""Flowmend settings, all from the environment (twelve-factor).

DATABASE_URL   PostgreSQL URL, e.g. postgres://user@host:5432/flowmend.
               Unset: an SQLite file (FLOWMEND_DATA_DIR/flowmend.sqlite3), embedded mode.
BROKER_URL     redis://... or amqp://... Unset: an in-process broker; `manage.py serve`
               then runs workers in-process.
REDIS_URL      Channel layer for live pages. Unset: in-memory (single process only).
SECRET_KEY     Required when DEBUG is off.
ALLOWED_HOSTS  Comma-separated. Default: localhost,127.0.0.1,[::1].
DEBUG          1/true to enable. Default: off, except in embedded mode.
FLOWMEND_PYTHON_MODULES  Comma-separated module prefixes that `python` steps may import.
                         Default: examples.
FLOWMEND_WORKER_THREADS  Threads per worker process (default 8).
FLOWMEND_DATA_DIR        Where embedded mode keeps its SQLite file (default: ./var).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATABASE_URL = os.environ.get("DATABASE_URL", "")
BROKER_URL = os.environ.get("BROKER_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
EMBEDDED = not DATABASE_URL
DATA_DIR = Path(os.environ.get("FLOWMEND_DATA_DIR", BASE_DIR / "var"))

DEBUG = env_bool("DEBUG", EMBEDDED)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    # Sessions and CSRF tokens signed with a well-known key can be forged: fine for a first
    # look on 127.0.0.1, never for production. `manage.py check --deploy` flags it too.
    if not DEBUG and not EMBEDDED:
        import sys

        print(
            "WARNING: SECRET_KEY is not set; using an insecure development key. "
            "Set SECRET_KEY in production.",
            file=sys.stderr,
        )
    SECRET_KEY = "django-insecure-flowmend-development-key-change-me"  # noqa: S105

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "workflows",
    "interventions",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "monitoring.middleware.ActionPageMiddleware",
]

ROOT_URLCONF = "flowmend.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "flowmend.asgi.application"

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "flowmend.sqlite3",
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels-redis blocks in BRPOP for 5 s; redis-py's asyncio default socket
                # timeout is also 5 s, which killed idle consumers: give the socket room.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                # per-process queue; change notices are tiny and coalesced by the consumer
                "capacity": 1000,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"

FLOWMEND_PYTHON_MODULES = [
    m.strip() for m in os.environ.get("FLOWMEND_PYTHON_MODULES", "examples").split(",") if m.strip()
]
FLOWMEND_WORKER_THREADS = int(os.environ.get("FLOWMEND_WORKER_THREADS", "8"))
# Waits shorter than this ride the broker's message delay; longer ones park the run
# in `waiting` with a due time in the database for the sweeper.
FLOWMEND_SHORT_WAIT_SECONDS = float(os.environ.get("FLOWMEND_SHORT_WAIT_SECONDS", "30"))
# A running attempt's lease; its worker extends it every third of this. A worker that
# dies loses its attempts to the sweeper within about this long.
FLOWMEND_LEASE_SECONDS = float(os.environ.get("FLOWMEND_LEASE_SECONDS", "6"))
FLOWMEND_REDISPATCH_AFTER = float(os.environ.get("FLOWMEND_REDISPATCH_AFTER", "60"))
FLOWMEND_SWEEP_INTERVAL = float(os.environ.get("FLOWMEND_SWEEP_INTERVAL", "1"))
# The same worker may run the next step of a chain inline for up to this long.
# The overview's aggregate figures are computed at most this often per process.
FLOWMEND_OVERVIEW_CACHE_SECONDS = float(os.environ.get("FLOWMEND_OVERVIEW_CACHE_SECONDS", "2"))
FLOWMEND_INLINE_SLICE_SECONDS = float(os.environ.get("FLOWMEND_INLINE_SLICE_SECONDS", "0.5"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# Covering indexes (INCLUDE) serve the dashboard on PostgreSQL; SQLite (embedded mode)
# builds them without the included columns, which is fine for a first look.
SILENCED_SYSTEM_CHECKS = ["models.W040"]
