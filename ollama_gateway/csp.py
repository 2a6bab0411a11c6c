"""Content-Security-Policy for the gateway's own pages: the admin, its dashboard and the API docs.

Django 5.2 has none built in. Model routes (`/api/*`, `/v1/*`) get no policy: they relay
Ollama's JSON and streams to programs, not pages to browsers.
"""

from django.conf import settings

# Every page is served from the gateway itself (admin and sidecar assets): scripts only from
# here, never inline. Styles may be inline (the admin's and ReDoc's), images may be data: URLs
# (Swagger UI's icons), and ReDoc's search runs in a blob: worker.
DEFAULT_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_PREFIXES = ("/admin/", "/docs", "/redoc")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith(PAGE_PREFIXES):
            policy = settings.CONTENT_SECURITY_POLICY or DEFAULT_POLICY
            response.setdefault("Content-Security-Policy", policy)
        return response
