"""ASGI entry point, where the hub is mounted. Run it (from the repository's root) with:

    .venv/bin/uvicorn examples.django_project.asgi:application --ws wshub.native:HubProtocol \
        --http wshub.uvicorn_protocols:GuardedHttpProtocol \
        --ws-max-size 65536 --ws-ping-interval 30 --ws-ping-timeout 30

Django answers HTTP; wshub answers WebSockets at /ws. Django has no ASGI lifespan, so the
middleware runs the hub's start-up and shutdown itself. ``manage.py runserver`` serves WSGI and
never reaches this file: /ws needs an ASGI server (uvicorn, daphne).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

from django.core.asgi import get_asgi_application

from wshub import HubMiddleware

from .hub import hub

application = HubMiddleware(get_asgi_application(), hub, path="/ws", forward_lifespan=False)
