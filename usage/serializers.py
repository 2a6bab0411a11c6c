from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from keys.models import ApiKey

MAX_PERIOD = timedelta(days=400)


class PeriodQuerySerializer(serializers.Serializer):
    """`from` and `to` (ISO 8601; default: the last 24 hours)."""

    def get_fields(self):
        fields = super().get_fields()
        # `from` is a Python keyword: declared here rather than as a class attribute.
        fields["from"] = serializers.DateTimeField(required=False)
        fields["to"] = serializers.DateTimeField(required=False)
        return fields

    def validate(self, attrs):
        end = attrs.get("to") or timezone.now()
        start = attrs.get("from") or end - timedelta(hours=24)
        if start >= end:
            raise serializers.ValidationError({"from": "Must be before `to`."})
        if end - start > MAX_PERIOD:
            raise serializers.ValidationError({"from": "The period is limited to 400 days."})
        return {**attrs, "start": start, "end": end}


class StatsQuerySerializer(PeriodQuerySerializer):
    granularity = serializers.ChoiceField(
        ["hour", "day"], required=False, help_text="Default: hour up to 48 hours, else day."
    )
    model = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if "granularity" not in attrs:
            attrs["granularity"] = (
                "hour" if attrs["end"] - attrs["start"] <= timedelta(hours=48) else "day"
            )
        return attrs


class AdminStatsQuerySerializer(StatsQuerySerializer):
    key = serializers.CharField(required=False, help_text="A key's preview: only its requests.")

    def validate_key(self, value):
        try:
            return ApiKey.objects.get(preview=value)
        except ApiKey.DoesNotExist:
            raise serializers.ValidationError(f"No API key with preview {value!r}.") from None


class LatencySerializer(serializers.Serializer):
    avg = serializers.FloatField(allow_null=True)
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class SummarySerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Upstream errors and timeouts.")
    rate_limited = serializers.IntegerField()
    outcomes = serializers.DictField(child=serializers.IntegerField())
    latency_ms = LatencySerializer()
    ttft_ms_avg = serializers.FloatField(allow_null=True)


class ModelSummarySerializer(SummarySerializer):
    model = serializers.CharField()


class TimeSummarySerializer(SummarySerializer):
    time = serializers.DateTimeField()


class KeySummarySerializer(SummarySerializer):
    key = serializers.CharField(allow_null=True, help_text="Preview; null: failed authentication.")
    name = serializers.CharField(allow_null=True)


class StatsSerializer(serializers.Serializer):
    granularity = serializers.CharField()
    totals = SummarySerializer()
    by_model = ModelSummarySerializer(many=True)
    series = TimeSummarySerializer(many=True)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DateTimeField()
        fields["to"] = serializers.DateTimeField()
        return fields


class AdminStatsSerializer(StatsSerializer):
    by_key = KeySummarySerializer(many=True)
