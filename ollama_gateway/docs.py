"""ReDoc served entirely by the gateway, for networks with no internet access.

drf-spectacular's page loads Google Fonts, and ReDoc's bundle shows Redocly's logo from
cdn.redoc.ly in its sidebar (no setting turns it off). The page here has no web fonts
(templates/api_docs/redoc.html) and its bundle is the sidecar package's, with that one image
replaced by an empty inline one.
"""

import gzip
from functools import cache
from pathlib import Path

from django.contrib.staticfiles import finders
from django.http import HttpResponse
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from drf_spectacular.views import SpectacularRedocView

BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
REMOTE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_IMAGE = b"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"


@cache
def redoc_bundle() -> bytes:
    """The sidecar's ReDoc bundle with no remote image (read once per process)."""
    return Path(finders.find(BUNDLE)).read_bytes().replace(REMOTE_LOGO, BLANK_IMAGE)


@cache
def redoc_bundle_gzip() -> bytes:
    return gzip.compress(redoc_bundle(), mtime=0)  # 1.1 MB -> 0.3 MB


def redoc_script(request):
    compressed = "gzip" in request.headers.get("Accept-Encoding", "")
    body = redoc_bundle_gzip() if compressed else redoc_bundle()
    response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    if compressed:
        response["Content-Encoding"] = "gzip"
    patch_vary_headers(response, ["Accept-Encoding"])
    response["Cache-Control"] = "public, max-age=86400"
    return response


class RedocView(SpectacularRedocView):
    template_name = "api_docs/redoc.html"

    def _redoc_standalone(self):
        return reverse("redoc-script")
