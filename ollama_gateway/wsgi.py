"""WSGI entry point: `gunicorn -c gunicorn.conf.py ollama_gateway.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ollama_gateway.settings")

application = get_wsgi_application()
