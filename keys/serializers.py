from rest_framework import serializers

from keys.models import ApiKey
from keys.services import MAX_CONCURRENT, MAX_RATE_LIMIT, MAX_TOKEN_QUOTA, PRIORITIES, ROLES


class ApiKeySerializer(serializers.ModelSerializer):
    """A key as lists show it: never the secret, never the hash."""

    class Meta:
        model = ApiKey
        fields = [
            "preview",
            "name",
            "role",
            "rate_limit",
            "token_quota",
            "max_concurrent",
            "priority",
            "tokens_per_minute",
            "allowed_models",
            "is_active",
            "expires_at",
            "created_at",
            "created_by",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(
        choices=ApiKey.Role.choices,
        default=ApiKey.Role.USER,
        error_messages={
            "invalid_choice": f'"{{input}}" is not a valid role; allowed values: {ROLES}.'
        },
    )
    rate_limit = serializers.IntegerField(
        min_value=1,
        max_value=MAX_RATE_LIMIT,
        required=False,
        help_text="Requests per hour; defaults by role.",
    )
    token_quota = serializers.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_QUOTA,
        required=False,
        allow_null=True,
        help_text="Prompt + completion tokens per day (UTC); omitted: no quota.",
    )
    max_concurrent = serializers.IntegerField(
        min_value=1,
        max_value=MAX_CONCURRENT,
        required=False,
        allow_null=True,
        help_text="Generations running at once across every gateway process; omitted: no cap.",
    )
    priority = serializers.ChoiceField(
        choices=ApiKey.Priority.choices,
        default=ApiKey.Priority.INTERACTIVE,
        help_text="batch: takes a free slot only when no interactive request waits for it.",
        error_messages={
            "invalid_choice": f'"{{input}}" is not a valid priority; allowed values: {PRIORITIES}.'
        },
    )
    tokens_per_minute = serializers.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_QUOTA,
        required=False,
        allow_null=True,
        help_text="Prompt + completion tokens per clock minute; omitted: no limit.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list
    )


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The raw key. Shown once: it is stored only as a hash.")

    class Meta(ApiKeySerializer.Meta):
        fields = ["key", *ApiKeySerializer.Meta.fields]
        read_only_fields = fields
