from django.urls import path

from . import views_api as api
from . import views_internal as internal

urlpatterns = [
    path("", api.page, name="page"),
    path("api/me/", api.me),
    path("api/bookings/<uuid:booking_id>/", api.booking_detail),
    path("api/bookings/<uuid:booking_id>/status/", api.booking_status),
    path("api/conversations/<int:conversation_id>/messages/", api.conversation_messages),
    path("api/notifications/", api.notify),
    path("api/therapy/<int:customer_id>/<int:therapist_id>/messages/", api.therapy_messages),
    path("api/work/requests/", api.work_request),
    path("api/work/requests/<int:work_id>/", api.work_detail),
    # Beacon only: keep /internal/ off the public proxy.
    path("internal/beacon/authorize/", internal.authorize),
    path("internal/beacon/chat/message/", internal.chat_message),
    path("internal/beacon/chat/read/", internal.chat_read),
    path("internal/beacon/chat/edit/", internal.chat_edit),
    path("internal/beacon/chat/delete/", internal.chat_delete),
    path("internal/beacon/chat/react/", internal.chat_react),
    path("internal/beacon/therapy/message/", internal.therapy_message),
    path("internal/beacon/visible/work-response/", internal.work_response),
]
