"""Django's own cache tests, against larder_client.django.LarderCache (see tests.py).

The suite runner (``../run.py``) copies this app into the ``tests/`` directory of Django's
source distribution and runs ``runtests.py cache larder_cache -k Larder``: ``cache`` is named
so that Django installs it (its tests module imports its models), and ``-k Larder`` leaves
only the classes here.
"""

# The Django test apps whose modules this app's tests import; run.py names them as labels.
DJANGO_TEST_APPS = ["cache"]
