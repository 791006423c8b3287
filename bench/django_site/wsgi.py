"""The bench's Django site as a WSGI application (serve bench.django_site.wsgi:application).

The sqlite database is migrated and seeded with ten users on first import (under a file lock: several
servers may start at once)."""

import fcntl
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_site.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402 - after django.setup()
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402 - after django.setup()


def _prepare() -> None:
    name = settings.DATABASES["default"]["NAME"]
    with open(name + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from django.contrib.auth.models import User
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        if not User.objects.exists():
            User.objects.bulk_create(User(username=f"user{i}", email=f"user{i}@example.com") for i in range(10))
    from django.db import connections

    connections.close_all()  # opened before fork (--preload) or in the master: each thread opens its own


_prepare()
application = WSGIHandler()
