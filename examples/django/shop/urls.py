"""The shop's routes."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("login/", views.login_view),
    path("logout-everywhere/", views.logout_everywhere),
    path("catalogue/", views.catalogue),
    path("api/v1/ai/chat", views.chat),
]
