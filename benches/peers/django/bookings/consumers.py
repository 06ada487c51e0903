"""The booking consumer as a Channels app writes it: JWT from the query string, one group per
booking, ping answered with pong, group events forwarded to the socket."""
import os
from urllib.parse import parse_qs

import jwt
from channels.generic.websocket import AsyncJsonWebsocketConsumer

SECRET = os.environ["BEACON_JWT_SECRET"]


def group_for(room):
    # Channels group names allow only ASCII letters, digits, hyphens, underscores and periods.
    return room.replace(":", "_")


class BookingConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.booking_id = self.scope["url_route"]["kwargs"]["booking_id"]
        token = parse_qs(self.scope["query_string"].decode()).get("token", [""])[0]
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
            ok = claims.get("token_type") == "access" and "user_id" in claims
        except jwt.PyJWTError:
            ok = False
        await self.accept()
        if not ok:
            await self.close(code=4001)
            return
        self.group = group_for(f"booking:{self.booking_id}")
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_json(
            {
                "type": "connection_established",
                "booking_id": self.booking_id,
                "message": "Connected to booking updates",
            }
        )

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong", "t": content.get("t")})

    async def room_message(self, event):
        await self.send_json(event["message"])
