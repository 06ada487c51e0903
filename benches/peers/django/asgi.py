"""ASGI entry point: HTTP to Django (the publish view), WebSockets to the booking consumer."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from bookings.consumers import BookingConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": URLRouter(
            [re_path(r"^ws/bookings/(?P<booking_id>[^/]{1,64})/$", BookingConsumer.as_asgi())]
        ),
    }
)
