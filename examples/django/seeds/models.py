"""What the five seed apps keep in their database, in one app for the example.

Beacon owns the sockets; these tables own the truth: who may follow a booking, who takes part
in a conversation, what was said (with database ids), who read it, who accepted a job.
"""

import uuid

from django.conf import settings
from django.db import models

User = settings.AUTH_USER_MODEL


# HunarMitra (seed 001): bookings followed live by their owner and assigned worker.
class Booking(models.Model):
    class Status(models.TextChoices):
        REQUESTED = "requested"
        CONFIRMED = "confirmed"
        ON_THE_WAY = "on_the_way"
        ARRIVED = "arrived"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="bookings_owned")
    worker = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="bookings_assigned"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def may_follow(self, user_id) -> bool:
        return str(user_id) in (str(self.owner_id), str(self.worker_id))


# UmEmployed (seed 002): conversations, messages with replies, attachments, reactions, edits,
# deletions and read receipts.
class Conversation(models.Model):
    participants = models.ManyToManyField(User, related_name="conversations")
    created_at = models.DateTimeField(auto_now_add=True)

    def has_participant(self, user_id) -> bool:
        return self.participants.filter(pk=user_id).exists()


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    sender = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    content = models.TextField()
    message_type = models.CharField(max_length=32, default="text")
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    attachment_url = models.URLField(max_length=2000, blank=True)
    attachment_name = models.CharField(max_length=255, blank=True)
    # Beacon's id for the forward that created this row: a retried forward finds it and is
    # answered with the same message instead of storing a second copy.
    forward_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]


class Reaction(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    reaction = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "reaction"], name="one_reaction_each")
        ]


class ReadReceipt(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reads")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    read_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="one_read_each")]


class Notification(models.Model):
    """A user's notification (UmEmployed, HunarMitra and Smart Parking all send them)."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    title = models.CharField(max_length=200, blank=True)
    message = models.TextField()
    notification_type = models.CharField(max_length=32, default="message")
    data = models.JSONField(default=dict, blank=True)
    is_read = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)


# Therapy (seed 003): customers and therapists; their chat is stored per pair.
class Customer(models.Model):
    # The user's own id is the customer id in the socket URL.
    user = models.OneToOneField(User, primary_key=True, on_delete=models.CASCADE, related_name="customer")


class Therapist(models.Model):
    user = models.OneToOneField(User, primary_key=True, on_delete=models.CASCADE, related_name="therapist")
    customers = models.ManyToManyField(Customer, blank=True, related_name="therapists")


class TherapyMessage(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="messages")
    therapist = models.ForeignKey(Therapist, on_delete=models.CASCADE, related_name="messages")
    sender = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    message = models.TextField()
    forward_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


# VISIBLE (seed 000): providers, seekers and the work seekers ask for.
class Provider(models.Model):
    user = models.OneToOneField(User, primary_key=True, on_delete=models.CASCADE, related_name="provider")
    category_code = models.CharField(max_length=16)
    subcategory_code = models.CharField(max_length=16, blank=True)
    mobile_number = models.CharField(max_length=20, blank=True)


class Seeker(models.Model):
    user = models.OneToOneField(User, primary_key=True, on_delete=models.CASCADE, related_name="seeker")
    mobile_number = models.CharField(max_length=20, blank=True)


class WorkRequest(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        ACCEPTED = "accepted"
        CANCELLED = "cancelled"

    seeker = models.ForeignKey(Seeker, on_delete=models.CASCADE, related_name="work_requests")
    service_type = models.CharField(max_length=32, default="worker")
    category_code = models.CharField(max_length=16)
    subcategory_code = models.CharField(max_length=16, blank=True)
    message = models.TextField(blank=True)
    latitude = models.FloatField()
    longitude = models.FloatField()
    distance_radius = models.FloatField(default=5)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    offered_to = models.ManyToManyField(Provider, blank=True, related_name="offers")
    accepted_by = models.ForeignKey(
        Provider, null=True, blank=True, on_delete=models.SET_NULL, related_name="accepted_work"
    )
    created_at = models.DateTimeField(auto_now_add=True)


class WorkResponse(models.Model):
    work = models.ForeignKey(WorkRequest, on_delete=models.CASCADE, related_name="responses")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="responses")
    response = models.CharField(max_length=16)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
