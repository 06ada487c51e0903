"""The app's own REST API (simplejwt access tokens, the same ones Beacon checks). Changes that
clients must hear about are published to Beacon after they commit."""

from django.conf import settings
from django.db import transaction
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from . import beacon, wire
from .models import (
    Booking,
    Conversation,
    Customer,
    Notification,
    Provider,
    Seeker,
    Therapist,
    WorkRequest,
)


def page(request):
    """The demo page: sign in, follow a booking and a conversation through Beacon."""
    return render(request, "seeds/index.html")


@api_view(["GET"])
def me(request):
    u = request.user
    return Response(
        {
            "id": u.pk,
            "username": u.username,
            "first_name": u.first_name,
            "last_name": u.last_name,
            "is_staff": u.is_staff,
            "bookings": [str(b) for b in Booking.objects.filter(owner=u).values_list("pk", flat=True)]
            + [str(b) for b in Booking.objects.filter(worker=u).values_list("pk", flat=True)],
            "conversations": list(u.conversations.values_list("pk", flat=True)),
        }
    )


# HunarMitra -------------------------------------------------------------------------------

@api_view(["GET"])
def booking_detail(request, booking_id):
    b = get_object_or_404(Booking, pk=booking_id)
    if not (request.user.is_staff or b.may_follow(request.user.pk)):
        return Response({"detail": "not your booking"}, status=status.HTTP_403_FORBIDDEN)
    return Response(wire.booking(b))


@api_view(["POST"])
def booking_status(request, booking_id):
    """The worker (or owner, or staff) moves a booking on; both sides hear ``booking_status``."""
    b = get_object_or_404(Booking, pk=booking_id)
    u = request.user
    if not (u.is_staff or b.may_follow(u.pk)):
        return Response({"detail": "not your booking"}, status=status.HTTP_403_FORBIDDEN)
    new = request.data.get("status")
    if new not in Booking.Status.values:
        return Response({"detail": f"status must be one of {Booking.Status.values}"}, status=400)
    with transaction.atomic():
        b.status = new
        b.save(update_fields=["status", "updated_at"])
        fields = {
            "booking_id": str(b.pk),
            "status": b.status,
            "event_type": f"booking_{b.status}",
            "actor": u.get_full_name() or u.username,
            "timestamp": wire.iso(b.updated_at),
        }
        if settings.BEACON_PUBLISH == "channel_layer":
            # The Channels app's call, unchanged: its consumer's booking_status handler is now
            # the protocol's `events."booking.status"`.
            beacon.group_send(f"booking_{b.pk}", {"type": "booking.status", **fields})
        else:
            beacon.publish(f"booking:{b.pk}", {"type": "booking_status", **fields})
    return Response(wire.booking(b))


# UmEmployed --------------------------------------------------------------------------------

@api_view(["GET"])
def conversation_messages(request, conversation_id):
    """The stored history: what a client reloads after a reconnect."""
    conv = get_object_or_404(Conversation, pk=conversation_id)
    if not conv.has_participant(request.user.pk):
        return Response({"detail": "not a participant"}, status=status.HTTP_403_FORBIDDEN)
    msgs = conv.messages.select_related("sender").prefetch_related("reactions")
    return Response(
        {
            "conversation_id": conv.pk,
            "messages": [wire.chat_message(m) for m in msgs],
            "reads": {
                str(m.pk): [r.user_id for r in m.reads.all()] for m in msgs.prefetch_related("reads")
            },
        }
    )


@api_view(["POST"])
def notify(request):
    """Staff send a user a notification (UmEmployed, HunarMitra and Smart Parking shapes)."""
    if not request.user.is_staff:
        return Response({"detail": "staff only"}, status=status.HTTP_403_FORBIDDEN)
    d = request.data
    n = Notification.objects.create(
        user_id=d["user_id"],
        title=d.get("title", ""),
        message=d["message"],
        notification_type=d.get("notification_type", "message"),
        data=d.get("data", {}),
    )
    app = d.get("app", "umemployed")
    if app == "umemployed":
        msg = {
            "type": "notification",
            "notification": {
                "id": n.pk,
                "title": n.title,
                "message": n.message,
                "notification_type": n.notification_type,
                "timestamp": wire.iso(n.created_at),
                "is_read": False,
                "data": n.data,
            },
        }
    elif app == "smartparking":
        msg = {"type": "notification", "message": n.message, "notification_type": n.notification_type, "data": n.data}
    else:
        msg = {"type": "notification", "title": n.title, "message": n.message, "data": n.data}
    beacon.publish(f"user:{n.user_id}", msg)
    return Response({"id": n.pk}, status=201)


# Therapy ----------------------------------------------------------------------------------

@api_view(["GET"])
def therapy_messages(request, customer_id, therapist_id):
    customer = get_object_or_404(Customer, pk=customer_id)
    therapist = get_object_or_404(Therapist, pk=therapist_id)
    if request.user.pk not in (customer.pk, therapist.pk):
        return Response({"detail": "not your conversation"}, status=status.HTTP_403_FORBIDDEN)
    msgs = customer.messages.filter(therapist=therapist)
    return Response({"messages": [dict(wire.therapy_message(m), type="message") for m in msgs]})


# VISIBLE ----------------------------------------------------------------------------------

@api_view(["POST"])
def work_request(request):
    """A seeker asks for work; Beacon offers it to the nearest active providers."""
    seeker = Seeker.objects.filter(pk=request.user.pk).first()
    if seeker is None:
        return Response({"detail": "seekers only"}, status=status.HTTP_403_FORBIDDEN)
    d = request.data
    w = WorkRequest.objects.create(
        seeker=seeker,
        service_type=d.get("service_type", "worker"),
        category_code=d["category_code"],
        subcategory_code=d.get("subcategory_code", ""),
        message=d.get("message", ""),
        latitude=float(d["latitude"]),
        longitude=float(d["longitude"]),
        distance_radius=float(d.get("distance_radius", 5)),
    )
    u = request.user
    answer = beacon.dispatch_work(
        {
            "work_id": w.pk,
            "service_type": w.service_type,
            "message": w.message,
            "latitude": w.latitude,
            "longitude": w.longitude,
            "category_code": w.category_code,
            "subcategory_code": w.subcategory_code,
            "distance_radius": w.distance_radius,
            "max_providers": int(d.get("max_providers", 3)),
            "created_at": wire.iso(w.created_at),
            "seeker": {
                "user_id": u.pk,
                "name": u.get_full_name() or u.username,
                "mobile_number": seeker.mobile_number,
                "profile_photo": "",
            },
        }
    )
    ids = [int(p) for p in (answer or {}).get("provider_ids", [])]
    w.offered_to.set(Provider.objects.filter(pk__in=ids))
    return Response({"work_id": w.pk, "offered_to": ids}, status=201)


@api_view(["GET"])
def work_detail(request, work_id):
    w = get_object_or_404(WorkRequest, pk=work_id)
    if request.user.pk != w.seeker_id and not w.offered_to.filter(pk=request.user.pk).exists():
        return Response({"detail": "not your work"}, status=status.HTTP_403_FORBIDDEN)
    return Response(
        {
            "work_id": w.pk,
            "status": w.status,
            "accepted_by": w.accepted_by_id,
            "responses": [
                {"provider_id": r.provider_id, "response": r.response, "message": r.message}
                for r in w.responses.order_by("id")
            ],
            "at": wire.iso(timezone.now()),
        }
    )
