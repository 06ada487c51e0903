from django.urls import path

from .views import publish

urlpatterns = [path("api/publish", publish)]
