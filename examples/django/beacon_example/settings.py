"""Settings of the example backend that runs beside Beacon.

Everything deployment-specific comes from the environment:

- ``DATABASE_URL``: any URL dj-database-url reads (``postgres://...``); SQLite file
  ``db.sqlite3`` beside this project when unset.
- ``BEACON_JWT_SECRET``: the HS256 key simplejwt signs access tokens with; Beacon verifies
  them with the same variable (config/beacon.toml, ``[keys.jwt]``).
- ``BEACON_URL`` / ``BEACON_API_KEY``: where events are published (``POST /api/publish``).
- ``BEACON_PUBLISH``: how booking status events leave: ``http`` (default: Beacon's publish
  API) or ``channel_layer`` (``channel_layer.group_send`` through channels_redis, as the
  Channels app did; Beacon reads the groups its protocol's ``[channel_layer]`` maps).
  ``CHANNEL_LAYER_URL`` (default ``redis://127.0.0.1:6379/0``) and ``CHANNEL_LAYER_BACKEND``
  (default ``channels_redis.core.RedisChannelLayer``) are then its ``CHANNEL_LAYERS``.
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret-change-me-in-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "seeds",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "beacon_example.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

ASGI_APPLICATION = "beacon_example.asgi.application"
WSGI_APPLICATION = "beacon_example.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Beacon's forwards and the REST API write concurrently: wait for the lock instead of
    # failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

# Stock simplejwt: HS256, claims user_id, token_type, exp, iat, jti. No custom claims.
SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": os.environ.get(
        "BEACON_JWT_SECRET", "dev-only-jwt-secret-of-at-least-32-bytes!!"
    ),
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=30),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
}

# Where this backend publishes events (Beacon's publish API).
BEACON_URL = os.environ.get("BEACON_URL", "http://127.0.0.1:8080")
BEACON_API_KEY = os.environ.get("BEACON_API_KEY", "")
BEACON_PUBLISH_TIMEOUT_S = float(os.environ.get("BEACON_PUBLISH_TIMEOUT_S", "2"))

# The drop-in: a team that keeps its group_send calls keeps this setting as it was, and Beacon
# is configured with the same Redis (its config's [channel_layer]).
BEACON_PUBLISH = os.environ.get("BEACON_PUBLISH", "http")
if BEACON_PUBLISH not in ("http", "channel_layer"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"BEACON_PUBLISH must be 'http' or 'channel_layer', not {BEACON_PUBLISH!r}"
    )
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get(
            "CHANNEL_LAYER_BACKEND", "channels_redis.core.RedisChannelLayer"
        ),
        "CONFIG": {"hosts": [os.environ.get("CHANNEL_LAYER_URL", "redis://127.0.0.1:6379/0")]},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"seeds": {"handlers": ["console"], "level": "INFO"}},
}

# Tests only (Django's test runner, and the end-to-end tests that start this server): a fast
# password hash, so creating and signing in demo users costs milliseconds, not PBKDF2 rounds.
if sys.argv[1:2] == ["test"] or os.environ.get("BEACON_EXAMPLE_FAST_HASHES") == "1":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
