"""Django's own session tests, against larder_client.django.sessions.

``SessionTestsMixin`` (Django's ``tests/sessions_tests/tests.py``) holds the tests that every
session engine must pass; Django runs them against its cache engine as
``CacheSessionTests(SessionTestsMixin, SimpleTestCase)``. The classes here do the same with
this engine's ``SessionStore``, once with Django's test settings (``USE_TZ = False``) and once
with time zones on. The suite runner copies this app into the ``tests/`` directory of Django's
source distribution (Django's files are never edited), starts a daemon and passes its address
in ``LARDER_DJANGO_TARGET`` (TCP; the time-zone class uses ``LARDER_DJANGO_UNIX_TARGET``):

    runtests.py sessions_tests larder_sessions -k Larder

``sessions_tests`` is named so that it is installed (its tests module imports its models);
``-k Larder`` leaves only these classes.
"""

import os

from django.test import SimpleTestCase, override_settings
from sessions_tests.tests import SessionTestsMixin

from larder_client.django.sessions import SessionStore

TCP = {"LOCATION": os.environ["LARDER_DJANGO_TARGET"]}
UNIX = {"LOCATION": os.environ.get("LARDER_DJANGO_UNIX_TARGET", TCP["LOCATION"])}


@override_settings(LARDER_SESSIONS=TCP)
class LarderSessionTests(SessionTestsMixin, SimpleTestCase):
    backend = SessionStore


@override_settings(LARDER_SESSIONS=UNIX, USE_TZ=True)
class LarderSessionWithTimeZoneTests(SessionTestsMixin, SimpleTestCase):
    backend = SessionStore
