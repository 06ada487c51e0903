from django.contrib import admin

from . import models

for m in (
    models.Booking,
    models.Conversation,
    models.Message,
    models.ReadReceipt,
    models.Reaction,
    models.Notification,
    models.Customer,
    models.Therapist,
    models.TherapyMessage,
    models.Provider,
    models.Seeker,
    models.WorkRequest,
    models.WorkResponse,
):
    admin.site.register(m)
