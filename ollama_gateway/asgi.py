"""ASGI entry point: `gunicorn -c gunicorn.conf.py ollama_gateway.asgi` (see handlers.py)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ollama_gateway.settings")
django.setup(set_prefix=False)

from ollama_gateway.handlers import application  # noqa: E402

__all__ = ["application"]
