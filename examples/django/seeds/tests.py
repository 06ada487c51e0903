"""The backend's own views: what Beacon asks (hooks, forwards) and the REST API."""

import json
from unittest import mock

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import TestCase

from .models import Booking, Conversation, Customer, Message, Provider, Seeker, Therapist, WorkRequest

User = get_user_model()


class Base(TestCase):
    def setUp(self):
        self.owner = User.objects.create_user("asha", password="pw", first_name="Asha", last_name="Rao")
        self.worker = User.objects.create_user("ravi", password="pw", first_name="Ravi")
        self.stranger = User.objects.create_user("sam", password="pw")
        self.booking = Booking.objects.create(owner=self.owner, worker=self.worker)
        self.conv = Conversation.objects.create()
        self.conv.participants.set([self.owner, self.worker])

    def beacon(self, path, body):
        return self.client.post(path, json.dumps(body), content_type="application/json")

    def token(self, username):
        r = self.client.post("/api/token/", {"username": username, "password": "pw"})
        self.assertEqual(r.status_code, 200, r.content)
        return r.json()["access"]

    def forward(self, path, user, message, forward_id=None, params=None):
        return self.beacon(
            path,
            {
                "forward_id": forward_id,
                "endpoint": "chat",
                "path": params or {"conversation_id": str(self.conv.pk)},
                "room": f"chat:{self.conv.pk}",
                "user_id": user.pk,
                "claims": {"user_id": user.pk, "token_type": "access"},
                "type": "x",
                "message": message,
            },
        )


class Tokens(Base):
    def test_access_tokens_are_stock_simplejwt(self):
        claims = jwt.decode(
            self.token("asha"), settings.SIMPLE_JWT["SIGNING_KEY"], algorithms=["HS256"]
        )
        self.assertEqual(set(claims), {"token_type", "exp", "iat", "jti", "user_id"})
        self.assertEqual(claims["token_type"], "access")
        # simplejwt writes the id as text; Beacon compares ids as text.
        self.assertEqual(str(claims["user_id"]), str(self.owner.pk))


class Hooks(Base):
    def ask(self, endpoint, user, **path):
        r = self.beacon(
            "/internal/beacon/authorize/",
            {"endpoint": endpoint, "path": path, "user_id": str(user.pk), "claims": {}},
        )
        self.assertEqual(r.status_code, 200)
        return r.json()["allow"]

    def test_booking_owner_and_worker_only(self):
        b = str(self.booking.pk)
        self.assertTrue(self.ask("booking", self.owner, booking_id=b))
        self.assertTrue(self.ask("booking", self.worker, booking_id=b))
        self.assertTrue(self.ask("tracking", self.worker, booking_id=b))
        self.assertFalse(self.ask("booking", self.stranger, booking_id=b))
        self.assertFalse(self.ask("booking", self.owner, booking_id="not-a-uuid"))

    def test_conversation_participants_only(self):
        c = str(self.conv.pk)
        self.assertTrue(self.ask("chat", self.owner, conversation_id=c))
        self.assertFalse(self.ask("chat", self.stranger, conversation_id=c))
        self.assertFalse(self.ask("chat", self.owner, conversation_id="999"))

    def test_facts_say_the_callers_role(self):
        b = str(self.booking.pk)
        r = self.beacon(
            "/internal/beacon/authorize/",
            {"endpoint": "tracking", "path": {"booking_id": b}, "user_id": self.worker.pk, "claims": {}},
        ).json()
        self.assertEqual(r, {"allow": True, "facts": {"role": "worker"}})
        c = Customer.objects.create(user=self.owner)
        t = Therapist.objects.create(user=self.worker)
        path = {"customer_id": str(c.pk), "therapist_id": str(t.pk)}

        def therapy(user):
            return self.beacon(
                "/internal/beacon/therapy/authorize/",
                {"endpoint": "chat", "path": path, "user_id": user.pk, "claims": {}},
            ).json()

        self.assertEqual(therapy(self.owner), {"allow": False})  # not yet this therapist's
        t.customers.add(c)
        self.assertEqual(therapy(self.owner), {"allow": True, "facts": {"role": "customer"}})
        self.assertEqual(therapy(self.worker), {"allow": True, "facts": {"role": "therapist"}})
        self.assertEqual(therapy(self.stranger), {"allow": False})

    def test_unknown_endpoint_and_garbage(self):
        self.assertFalse(self.ask("nope", self.owner))
        r = self.client.post("/internal/beacon/authorize/", "x", content_type="application/json")
        self.assertEqual(r.status_code, 400)


class ChatForwards(Base):
    def test_message_is_stored_with_its_id_and_sender(self):
        r = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "hi"}, "f1")
        self.assertEqual(r.status_code, 200)
        m = r.json()["broadcast"]["message"]
        stored = Message.objects.get()
        self.assertEqual(m["id"], stored.pk)
        self.assertEqual(m["content"], "hi")
        self.assertEqual(m["sender"], {"id": self.owner.pk, "first_name": "Asha", "last_name": "Rao"})

    def test_a_retried_forward_is_stored_once(self):
        a = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "hi"}, "f1").json()
        b = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "hi"}, "f1").json()
        self.assertEqual(a, b)
        self.assertEqual(Message.objects.count(), 1)

    def test_reply_attachment_and_strangers(self):
        first = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "q"}).json()
        mid = first["broadcast"]["message"]["id"]
        r = self.forward(
            "/internal/beacon/chat/message/",
            self.worker,
            {"message": "a", "reply_to": mid, "attachment": {"url": "https://x.test/a.png", "name": "a.png"}},
        ).json()["broadcast"]["message"]
        self.assertEqual(r["reply_to"], mid)
        self.assertEqual(r["attachment"], {"url": "https://x.test/a.png", "name": "a.png"})
        r = self.forward("/internal/beacon/chat/message/", self.stranger, {"message": "x"})
        self.assertEqual((r.status_code, r.json()["error"]), (403, "no_access"))
        r = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "x", "reply_to": 999})
        self.assertEqual((r.status_code, r.json()["error"]), (404, "unknown_message"))

    def test_edit_and_delete_by_their_author_only(self):
        mid = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "q"}).json()[
            "broadcast"
        ]["message"]["id"]
        r = self.forward("/internal/beacon/chat/edit/", self.worker, {"message_id": mid, "content": "z"})
        self.assertEqual((r.status_code, r.json()["error"]), (403, "not_author"))
        r = self.forward("/internal/beacon/chat/edit/", self.owner, {"message_id": mid, "content": "q2"})
        self.assertEqual(r.json()["broadcast"]["content"], "q2")
        r = self.forward("/internal/beacon/chat/delete/", self.worker, {"message_id": mid})
        self.assertEqual(r.status_code, 403)
        r = self.forward("/internal/beacon/chat/delete/", self.owner, {"message_id": mid})
        self.assertEqual(r.json()["broadcast"]["message_id"], mid)
        self.assertIsNotNone(Message.objects.get(pk=mid).deleted_at)

    def test_read_receipts_once_per_reader_and_reactions(self):
        mid = self.forward("/internal/beacon/chat/message/", self.owner, {"message": "q"}).json()[
            "broadcast"
        ]["message"]["id"]
        r = self.forward("/internal/beacon/chat/read/", self.worker, {"message_id": mid}).json()
        self.assertEqual(r["broadcast"]["read_by"]["id"], self.worker.pk)
        self.assertEqual(self.forward("/internal/beacon/chat/read/", self.worker, {"message_id": mid}).json(), {})
        r = self.forward("/internal/beacon/chat/react/", self.worker, {"message_id": mid, "reaction": "+1"})
        self.assertEqual(r.json()["broadcast"]["reaction"], "+1")

    def test_history_through_the_api(self):
        self.forward("/internal/beacon/chat/message/", self.owner, {"message": "stored"})
        tok = self.token("ravi")
        r = self.client.get(
            f"/api/conversations/{self.conv.pk}/messages/", HTTP_AUTHORIZATION=f"Bearer {tok}"
        )
        self.assertEqual([m["content"] for m in r.json()["messages"]], ["stored"])
        r = self.client.get(
            f"/api/conversations/{self.conv.pk}/messages/",
            HTTP_AUTHORIZATION=f"Bearer {self.token('sam')}",
        )
        self.assertEqual(r.status_code, 403)


class TherapyAndWork(Base):
    def test_therapy_message_stored_for_its_pair_only(self):
        c = Customer.objects.create(user=self.owner)
        t = Therapist.objects.create(user=self.worker)
        path = {"customer_id": str(c.pk), "therapist_id": str(t.pk)}
        r = self.forward("/internal/beacon/therapy/message/", self.owner, {"message": "hello"}, params=path)
        b = r.json()["broadcast"]
        self.assertEqual((b["message"], b["sender_id"]), ("hello", str(self.owner.pk)))
        r = self.forward("/internal/beacon/therapy/message/", self.stranger, {"message": "x"}, params=path)
        self.assertEqual(r.status_code, 403)

    def test_work_response_recorded_first_acceptance_wins(self):
        p1 = Provider.objects.create(user=self.worker, category_code="MS0001")
        p2 = Provider.objects.create(user=self.stranger, category_code="MS0001")
        w = WorkRequest.objects.create(
            seeker=Seeker.objects.create(user=self.owner), category_code="MS0001", latitude=1, longitude=2
        )
        w.offered_to.set([p1])
        msg = {"work_id": w.pk, "response": "accepted", "message": "on my way"}
        self.assertEqual(self.forward("/internal/beacon/visible/work-response/", self.stranger, msg).status_code, 403)
        self.assertEqual(self.forward("/internal/beacon/visible/work-response/", self.worker, msg).status_code, 200)
        w.refresh_from_db()
        self.assertEqual((w.status, w.accepted_by_id), ("accepted", p1.pk))
        self.assertNotEqual(p2.pk, w.accepted_by_id)


class BookingStatus(Base):
    def test_status_change_is_published_after_commit(self):
        with mock.patch("seeds.beacon.publish_now") as publish:
            with self.captureOnCommitCallbacks(execute=True):
                r = self.client.post(
                    f"/api/bookings/{self.booking.pk}/status/",
                    {"status": "on_the_way"},
                    HTTP_AUTHORIZATION=f"Bearer {self.token('ravi')}",
                    content_type="application/json",
                )
        self.assertEqual(r.status_code, 200, r.content)
        room, msg = publish.call_args.args
        self.assertEqual(room, f"booking:{self.booking.pk}")
        self.assertEqual((msg["type"], msg["status"], msg["actor"]), ("booking_status", "on_the_way", "Ravi"))

    def test_with_the_channel_layer_setting_it_is_a_group_send_after_commit(self):
        from django.test import override_settings

        sent = []

        async def group_send(group, event):
            sent.append((group, event))

        layer = mock.Mock(group_send=group_send)
        with override_settings(BEACON_PUBLISH="channel_layer"), mock.patch(
            "channels.layers.get_channel_layer", return_value=layer
        ), mock.patch("seeds.beacon.publish_now") as publish:
            with self.captureOnCommitCallbacks(execute=False) as callbacks:
                r = self.client.post(
                    f"/api/bookings/{self.booking.pk}/status/",
                    {"status": "arrived"},
                    HTTP_AUTHORIZATION=f"Bearer {self.token('ravi')}",
                    content_type="application/json",
                )
            self.assertEqual(sent, [])  # nothing before the commit
            for c in callbacks:
                c()
        self.assertEqual(r.status_code, 200, r.content)
        publish.assert_not_called()
        [(group, event)] = sent
        self.assertEqual(group, f"booking_{self.booking.pk}")
        self.assertEqual(
            (event["type"], event["booking_id"], event["status"], event["actor"]),
            ("booking.status", str(self.booking.pk), "arrived", "Ravi"),
        )

    def test_strangers_and_bad_statuses_are_refused(self):
        url = f"/api/bookings/{self.booking.pk}/status/"
        r = self.client.post(url, {"status": "arrived"}, HTTP_AUTHORIZATION=f"Bearer {self.token('sam')}")
        self.assertEqual(r.status_code, 403)
        r = self.client.post(url, {"status": "flying"}, HTTP_AUTHORIZATION=f"Bearer {self.token('asha')}")
        self.assertEqual(r.status_code, 400)
