from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from keys import crypto
from keys.models import ApiKey
from keys.serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeySerializer
from keys.services import api_key_create, api_key_revoke
from ollama_gateway.api import GatewayAPIView


class ApiKeyListCreateView(GatewayAPIView):
    """Create and list API keys (admin keys only)."""

    @extend_schema(responses=ApiKeySerializer(many=True), summary="List API keys")
    def get(self, request):
        keys = ApiKey.objects.all()
        return Response(ApiKeySerializer(keys, many=True).data)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        summary="Create an API key",
        description="The raw key is in this response and nowhere else: store it now.",
    )
    def post(self, request):
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = api_key_create(
            **serializer.validated_data, created_by=f"key:{request.user.preview}"
        )
        key.key = raw
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApiKeyRevokeView(GatewayAPIView):
    @extend_schema(
        responses={204: None},
        summary="Revoke an API key, for good",
        description=(
            "Takes the key's preview (its first 15 characters). A whole key given instead is "
            "revoked too (found by its digest): whoever holds it may end it. It is never echoed, "
            "logged or recorded: records and logs carry its preview only."
        ),
    )
    def delete(self, request, preview):
        raw_key = preview if crypto.is_raw_key(preview) else ""
        try:
            api_key_revoke(preview=preview, raw_key=raw_key)
        except ApiKey.DoesNotExist:
            shown = crypto.redact_keys(preview)
            raise NotFound(f"No API key with preview {shown!r}.") from None
        return Response(status=status.HTTP_204_NO_CONTENT)
