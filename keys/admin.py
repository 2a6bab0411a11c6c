from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse

from keys.models import ApiKey
from keys.services import api_key_create, api_key_revoke, api_key_validate


class ModelListField(forms.CharField):
    """Allowed models as comma-separated text; stored as a JSON list."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        return [m.strip() for m in (value or "").split(",") if m.strip()]


def priority_field():
    return forms.TypedChoiceField(
        choices=ApiKey.Priority.choices,
        required=False,
        empty_value=ApiKey.Priority.INTERACTIVE,
        initial=ApiKey.Priority.INTERACTIVE,
        help_text="A batch request takes a free slot only when no interactive request waits.",
    )


class ApiKeyCreateForm(forms.ModelForm):
    allowed_models = ModelListField(
        required=False, help_text="Comma-separated model names; empty means all models."
    )
    priority = priority_field()
    rate_limit = forms.IntegerField(
        required=False, min_value=1, help_text="Requests per hour; empty means the role's default."
    )

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "role",
            "rate_limit",
            "token_quota",
            "max_concurrent",
            "priority",
            "tokens_per_minute",
            "expires_at",
            "allowed_models",
        ]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                api_key_validate(**cleaned)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field, errors)
        return cleaned


class ApiKeyChangeForm(forms.ModelForm):
    allowed_models = ModelListField(
        required=False, help_text="Comma-separated model names; empty means all models."
    )
    priority = priority_field()

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                # An expiry already past is fine to keep; setting one in the past is not.
                expires_at = cleaned["expires_at"] if "expires_at" in self.changed_data else None
                api_key_validate(**{**cleaned, "expires_at": expires_at}, role=self.instance.role)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field, errors)
        return cleaned

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "rate_limit",
            "token_quota",
            "max_concurrent",
            "priority",
            "tokens_per_minute",
            "expires_at",
            "allowed_models",
        ]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "preview",
        "role",
        "is_active",
        "rate_limit",
        "token_quota",
        "max_concurrent",
        "priority",
        "last_used_at",
        "expires_at",
        "created_at",
    ]
    list_filter = ["role", "is_active", "created_at"]
    search_fields = ["name", "preview"]
    readonly_fields = [
        "preview",
        "role",
        "is_active",
        "created_at",
        "created_by",
        "revoked_at",
        "last_used_at",
    ]
    actions = ["revoke"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = ApiKeyChangeForm if obj else ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def has_delete_permission(self, request, obj=None):
        # Keys are revoked, never deleted: their usage history stays attributable.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, raw = api_key_create(
            **form.cleaned_data, created_by=f"admin:{request.user.get_username()}"
        )
        for f in ApiKey._meta.concrete_fields:
            setattr(obj, f.attname, getattr(created, f.attname))
        # Shown on the next page only; never put in messages, which may live in the session.
        request._created_raw_key = raw

    def response_add(self, request, obj, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "key": obj,
            "raw_key": request._created_raw_key,
        }
        response = TemplateResponse(request, "admin/keys/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys (final)")
    def revoke(self, request, queryset):
        count = 0
        for key in queryset.filter(is_active=True):
            api_key_revoke(preview=key.preview)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
