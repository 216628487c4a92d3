"""Django's session tests against larder_client.django.sessions (see tests.py)."""

# The Django test apps tests.py imports from (read by ../run.py).
DJANGO_TEST_APPS = ["sessions_tests"]
