"""Minimal Django settings for the Channels peer: what the HunarMitra app runs today."""
import os

SECRET_KEY = os.environ.get("BEACON_JWT_SECRET", "x" * 32)
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels", "bookings"]
MIDDLEWARE = []
ROOT_URLCONF = "bookings.urls"
ASGI_APPLICATION = "asgi.application"
DATABASES = {}
USE_TZ = True

if os.environ.get("CHANNEL_LAYER", "memory") == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
