"""WSGI entry point, for tools that want one. The server is ASGI: see ollama_gateway/asgi.py
(under WSGI the model routes run, but each request on a loop of its own and streams buffered)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ollama_gateway.settings")

application = get_wsgi_application()
