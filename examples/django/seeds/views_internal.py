"""What Beacon asks this backend (``/internal/beacon/...``): hooks and forwarded messages.

Hook (README "Authorization hooks"): ``{"endpoint", "path", "user_id", "claims"}`` in,
``{"allow": bool}`` out.

Forward (README "Forwarding client messages"): ``{"forward_id", "endpoint", "path", "room",
"user_id", "claims", "type", "message"}`` in; ``200 {"broadcast": {...}, "reply": {...}}``
(each optional: the fields of the server message Beacon sends to the room / to the sender)
or ``4xx {"error": code, "message": text}``, which the sender gets as the protocol's error
reply. ``forward_id`` is the same on Beacon's retries of one message, so storing is
idempotent.
"""

import json
import logging
import uuid
from functools import wraps

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import wire
from .models import (
    Booking,
    Conversation,
    Customer,
    Message,
    Provider,
    Reaction,
    ReadReceipt,
    Therapist,
    TherapyMessage,
    WorkRequest,
    WorkResponse,
)

log = logging.getLogger(__name__)
User = get_user_model()


def refuse(status: int, code: str, text: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": text}, status=status)


def beacon_call(view):
    """Parses Beacon's JSON body and finds the caller; answers 400 to anything else."""

    @csrf_exempt
    @require_POST
    @wraps(view)
    def wrapper(request):
        try:
            q = json.loads(request.body)
            user = User.objects.get(pk=int(q["user_id"]), is_active=True)
        except (ValueError, KeyError, TypeError):
            return refuse(400, "bad_request", "not a Beacon request")
        except User.DoesNotExist:
            return refuse(403, "unknown_user", "no such active user")
        return view(request, q, user)

    return wrapper


# Hooks ---------------------------------------------------------------------------------

def booking_access(q, user) -> bool:
    try:
        booking = Booking.objects.filter(pk=uuid.UUID(str(q["path"]["booking_id"]))).first()
    except (KeyError, ValueError):
        return False
    return booking is not None and (user.is_staff or booking.may_follow(user.pk))


def conversation_access(q, user) -> bool:
    try:
        cid = int(q["path"]["conversation_id"])
    except (KeyError, ValueError):
        return False
    return Conversation.objects.filter(pk=cid, participants=user).exists()


HOOKS = {
    # HunarMitra: the booking socket and the tracking POST ask the same question.
    "booking": booking_access,
    "tracking": booking_access,
    # UmEmployed: the chat socket.
    "chat": conversation_access,
}


@beacon_call
def authorize(request, q, user):
    check = HOOKS.get(q.get("endpoint"))
    if check is None:
        return JsonResponse({"allow": False})
    return JsonResponse({"allow": bool(check(q, user))})


# Forwards: UmEmployed chat ---------------------------------------------------------------

def conversation_for(q, user):
    try:
        cid = int(q["path"]["conversation_id"])
    except (KeyError, ValueError):
        return None
    return Conversation.objects.filter(pk=cid, participants=user).first()


def message_in(conversation, message_id):
    try:
        return Message.objects.select_related("sender").get(
            pk=int(message_id), conversation=conversation
        )
    except (TypeError, ValueError, Message.DoesNotExist):
        return None


@beacon_call
def chat_message(request, q, user):
    conv = conversation_for(q, user)
    if conv is None:
        return refuse(403, "no_access", "you are not a participant of this conversation")
    m = q.get("message") or {}
    fid = q.get("forward_id")
    if fid and (old := Message.objects.filter(forward_id=fid).first()):
        return JsonResponse({"broadcast": {"message": wire.chat_message(old)}})
    reply_to = None
    if m.get("reply_to") is not None:
        reply_to = message_in(conv, m["reply_to"])
        if reply_to is None:
            return refuse(404, "unknown_message", "reply_to is not a message of this conversation")
    attachment = m.get("attachment") or {}
    try:
        with transaction.atomic():
            msg = Message.objects.create(
                conversation=conv,
                sender=user,
                content=m.get("message", ""),
                message_type=m.get("message_type") or "text",
                reply_to=reply_to,
                attachment_url=str(attachment.get("url", ""))[:2000],
                attachment_name=str(attachment.get("name", ""))[:255],
                forward_id=fid,
            )
    except IntegrityError:
        msg = Message.objects.get(forward_id=fid)
    return JsonResponse({"broadcast": {"message": wire.chat_message(msg)}})


@beacon_call
def chat_read(request, q, user):
    conv = conversation_for(q, user)
    if conv is None:
        return refuse(403, "no_access", "you are not a participant of this conversation")
    msg = message_in(conv, (q.get("message") or {}).get("message_id"))
    if msg is None:
        return refuse(404, "unknown_message", "no such message in this conversation")
    receipt, created = ReadReceipt.objects.get_or_create(message=msg, user=user)
    if not created:
        # Already read: nothing new for the others to hear.
        return JsonResponse({})
    return JsonResponse(
        {
            "broadcast": {
                "message_id": msg.pk,
                "read_by": wire.person(user),
                "read_at": wire.iso(receipt.read_at),
            }
        }
    )


@beacon_call
def chat_edit(request, q, user):
    conv = conversation_for(q, user)
    if conv is None:
        return refuse(403, "no_access", "you are not a participant of this conversation")
    m = q.get("message") or {}
    msg = message_in(conv, m.get("message_id"))
    if msg is None or msg.deleted_at:
        return refuse(404, "unknown_message", "no such message in this conversation")
    if msg.sender_id != user.pk:
        return refuse(403, "not_author", "only its author may edit a message")
    msg.content = m.get("content", "")
    msg.edited_at = timezone.now()
    msg.save(update_fields=["content", "edited_at"])
    return JsonResponse(
        {
            "broadcast": {
                "message_id": msg.pk,
                "content": msg.content,
                "edited_by": user.pk,
                "edited_at": wire.iso(msg.edited_at),
            }
        }
    )


@beacon_call
def chat_delete(request, q, user):
    conv = conversation_for(q, user)
    if conv is None:
        return refuse(403, "no_access", "you are not a participant of this conversation")
    msg = message_in(conv, (q.get("message") or {}).get("message_id"))
    if msg is None or msg.deleted_at:
        return refuse(404, "unknown_message", "no such message in this conversation")
    if msg.sender_id != user.pk:
        return refuse(403, "not_author", "only its author may delete a message")
    msg.deleted_at = timezone.now()
    msg.save(update_fields=["deleted_at"])
    return JsonResponse(
        {
            "broadcast": {
                "message_id": msg.pk,
                "deleted_by": user.pk,
                "deleted_at": wire.iso(msg.deleted_at),
            }
        }
    )


@beacon_call
def chat_react(request, q, user):
    conv = conversation_for(q, user)
    if conv is None:
        return refuse(403, "no_access", "you are not a participant of this conversation")
    m = q.get("message") or {}
    msg = message_in(conv, m.get("message_id"))
    if msg is None or msg.deleted_at:
        return refuse(404, "unknown_message", "no such message in this conversation")
    r, _ = Reaction.objects.get_or_create(message=msg, user=user, reaction=str(m.get("reaction", ""))[:32])
    return JsonResponse(
        {
            "broadcast": {
                "message_id": msg.pk,
                "reaction": r.reaction,
                "user": wire.person(user),
                "timestamp": wire.iso(r.created_at),
            }
        }
    )


# Forwards: therapy chat ------------------------------------------------------------------

@beacon_call
def therapy_message(request, q, user):
    try:
        customer = Customer.objects.get(pk=int(q["path"]["customer_id"]))
        therapist = Therapist.objects.get(pk=int(q["path"]["therapist_id"]))
    except (KeyError, ValueError, Customer.DoesNotExist, Therapist.DoesNotExist):
        return refuse(404, "unknown_party", "no such customer or therapist")
    if user.pk not in (customer.pk, therapist.pk):
        return refuse(403, "forbidden", "not your conversation")
    fid = q.get("forward_id")
    if fid and (old := TherapyMessage.objects.filter(forward_id=fid).first()):
        return JsonResponse({"broadcast": wire.therapy_message(old)})
    try:
        with transaction.atomic():
            msg = TherapyMessage.objects.create(
                customer=customer,
                therapist=therapist,
                sender=user,
                message=(q.get("message") or {}).get("message", ""),
                forward_id=fid,
            )
    except IntegrityError:
        msg = TherapyMessage.objects.get(forward_id=fid)
    return JsonResponse({"broadcast": wire.therapy_message(msg)})


# Forwards: VISIBLE work responses ---------------------------------------------------------

@beacon_call
def work_response(request, q, user):
    m = q.get("message") or {}
    provider = Provider.objects.filter(pk=user.pk).first()
    try:
        work = WorkRequest.objects.get(pk=int(m.get("work_id")))
    except (TypeError, ValueError, WorkRequest.DoesNotExist):
        return refuse(404, "unknown_work", "no such work request")
    if provider is None or not work.offered_to.filter(pk=provider.pk).exists():
        return refuse(403, "not_offered", "this work was not offered to you")
    response = str(m.get("response", ""))
    with transaction.atomic():
        WorkResponse.objects.create(
            work=work, provider=provider, response=response, message=str(m.get("message", ""))
        )
        if response == "accepted":
            # First acceptance wins in the database too; Beacon's job table tells the others.
            WorkRequest.objects.filter(pk=work.pk, status=WorkRequest.Status.OPEN).update(
                status=WorkRequest.Status.ACCEPTED, accepted_by=provider
            )
    return JsonResponse({})
