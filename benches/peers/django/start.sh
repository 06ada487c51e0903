#!/usr/bin/env bash
# Starts the Django Channels peer on daphne on $PORT; CHANNEL_LAYER=memory|redis picks the
# layer (redis expects a redis-server on REDIS_URL, started by benches/run.sh).
cd "$(dirname "$0")"
exec .venv/bin/daphne -b 127.0.0.1 -p "${PORT:-8080}" asgi:application
