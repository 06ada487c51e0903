"""POST /api/publish: the app backend's way in, fanned out through the channel layer."""
import json
import os

from channels.layers import get_channel_layer
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .consumers import group_for

API_KEY = os.environ.get("BEACON_API_KEY", "")


@csrf_exempt
async def publish(request):
    if request.method != "POST":
        return JsonResponse({"error": "method not allowed", "status": 405}, status=405)
    if not API_KEY or request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return JsonResponse({"error": "unauthorized", "status": 401}, status=401)
    try:
        body = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "invalid json", "status": 400}, status=400)
    layer = get_channel_layer()
    items = body if isinstance(body, list) else [body]
    for it in items:
        await layer.group_send(group_for(it["room"]), {"type": "room.message", "message": it["message"]})
    # Channels does not report how many sockets a group send reached.
    return JsonResponse({"room": items[0]["room"], "delivered": 0} if not isinstance(body, list) else {"delivered": 0})
