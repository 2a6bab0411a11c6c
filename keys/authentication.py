"""`Authorization: Bearer <key>` (or `X-API-Key: <key>`) authentication for DRF views."""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from keys.services import api_key_authenticate, api_key_touch


def raw_key_from_request(request) -> str | None:
    """The key the client sent, or None when it sent none (a foreign scheme counts as none)."""
    header = get_authorization_header(request).split()
    if header and header[0].lower() == b"bearer":
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Bearer <key>'."
            )
        try:
            return header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
    return request.META.get("HTTP_X_API_KEY") or None


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = raw_key_from_request(request)
        if raw is None:
            return None
        key = api_key_authenticate(raw)
        # Remembered for the access log and usage records: the preview, never the raw key.
        request.key_preview_attempted = key.preview if key else raw[:15]
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if not key.is_active:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if key.is_expired():
            raise exceptions.AuthenticationFailed("This API key has expired.")
        api_key_touch(key)
        exchange = getattr(request, "exchange", None)
        if exchange is not None:
            exchange.key = key
        return key, key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) when credentials are missing or wrong.
        return 'Bearer realm="ollama-gateway"'
