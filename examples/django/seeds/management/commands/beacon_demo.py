"""Creates the demo users and rows the README and the end-to-end tests use (idempotent) and
prints their ids as one JSON object."""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from seeds.models import Booking, Conversation, Customer, Provider, Seeker, Therapist


class Command(BaseCommand):
    help = "Create demo users (password --password) and one row of each kind; print their ids."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="demo-pass-123")

    def handle(self, *args, password, **options):
        User = get_user_model()

        def user(username, first, last, **extra):
            u, created = User.objects.get_or_create(
                username=username, defaults={"first_name": first, "last_name": last, **extra}
            )
            if created:
                u.set_password(password)
                u.save()
            return u

        owner = user("asha", "Asha", "Rao")
        worker = user("ravi", "Ravi", "Kumar")
        stranger = user("sam", "Sam", "Lee")
        staff = user("admin", "Ada", "Min", is_staff=True)
        customer_u = user("cora", "Cora", "Diaz")
        therapist_u = user("theo", "Theo", "Park")
        provider_u = user("priya", "Priya", "Nair")
        seeker_u = user("sid", "Sid", "Menon")

        booking = Booking.objects.filter(owner=owner, worker=worker).first() or Booking.objects.create(
            owner=owner, worker=worker, status=Booking.Status.CONFIRMED
        )
        conv = Conversation.objects.filter(participants=owner).filter(participants=worker).first()
        if conv is None:
            conv = Conversation.objects.create()
            conv.participants.set([owner, worker])
        customer, _ = Customer.objects.get_or_create(user=customer_u)
        therapist, _ = Therapist.objects.get_or_create(user=therapist_u)
        therapist.customers.add(customer)
        Provider.objects.get_or_create(
            user=provider_u, defaults={"category_code": "MS0001", "subcategory_code": "SS0001"}
        )
        Seeker.objects.get_or_create(user=seeker_u)

        self.stdout.write(
            json.dumps(
                {
                    "password": password,
                    "users": {
                        u.username: u.pk
                        for u in (owner, worker, stranger, staff, customer_u, therapist_u, provider_u, seeker_u)
                    },
                    "booking": str(booking.pk),
                    "conversation": conv.pk,
                    "customer": customer.pk,
                    "therapist": therapist.pk,
                }
            )
        )
