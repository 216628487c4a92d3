"""The Django app of larder_client (for its management commands): add "larder_client.django"
to INSTALLED_APPS. Its label is ``larder``."""

from __future__ import annotations

from django.apps import AppConfig


class LarderConfig(AppConfig):
    name = "larder_client.django"
    label = "larder"
    verbose_name = "Larder"
