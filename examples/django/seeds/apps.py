from django.apps import AppConfig


class SeedsConfig(AppConfig):
    name = "seeds"
    verbose_name = "Seed apps (HunarMitra, UmEmployed, therapy, Smart Parking, VISIBLE)"
