"""The two ways this backend meets Beacon.

Outgoing: :func:`publish` replaces ``async_to_sync(channel_layer.group_send)``: one POST to
Beacon's publish API, sent after the surrounding transaction commits, so a socket never hears
of a row that was rolled back. Or keep ``group_send`` (:func:`group_send`, with
``BEACON_PUBLISH = "channel_layer"``): Beacon reads the channels_redis groups its protocol's
``[channel_layer]`` maps, and this backend needs neither Beacon's URL nor its API key for them.

Incoming: Beacon POSTs hook questions and forwarded client messages to ``/internal/beacon/``
(see views_internal.py). Those views are for Beacon only: keep ``/internal/`` off the public
proxy.
"""

import json
import logging
import urllib.error
import urllib.request

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)


def publish_now(room: str, message: dict) -> int | None:
    """Delivers ``message`` to every socket in ``room``; returns how many it reached, or
    ``None`` when Beacon could not be reached (logged: realtime is best effort, the database
    is the record)."""
    body = json.dumps({"room": room, "message": message}).encode()
    req = urllib.request.Request(
        settings.BEACON_URL.rstrip("/") + "/api/publish",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {settings.BEACON_API_KEY}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=settings.BEACON_PUBLISH_TIMEOUT_S) as resp:
            return json.loads(resp.read()).get("delivered")
    except urllib.error.HTTPError as e:
        log.warning("beacon refused a publish to %s: %s %s", room, e.code, e.read()[:200])
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.warning("beacon unreachable for a publish to %s: %s", room, e)
    return None


def publish(room: str, message: dict) -> None:
    """:func:`publish_now` once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: publish_now(room, message))


def group_send(group: str, event: dict) -> None:
    """``async_to_sync(channel_layer.group_send)(group, event)`` once the current transaction
    commits: exactly the call a Channels backend makes, with its ``CHANNEL_LAYERS``."""

    def send():
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        try:
            async_to_sync(get_channel_layer().group_send)(group, event)
        except Exception as e:  # realtime is best effort; the database is the record
            log.warning("group_send to %s failed: %s", group, e)

    transaction.on_commit(send)


def dispatch_work(body: dict) -> dict | None:
    """Asks Beacon to offer a work request to the nearest active providers
    (VISIBLE's ``POST /api/work/dispatch``); ``None`` when Beacon could not answer."""
    req = urllib.request.Request(
        settings.BEACON_URL.rstrip("/") + "/api/work/dispatch",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {settings.BEACON_API_KEY}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=settings.BEACON_PUBLISH_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.warning("beacon could not dispatch work %s: %s", body.get("work_id"), e)
    return None
