"""Key management in the admin: create shows the key once, revoke is an action.

Minting an admin key needs `keys.manage_admin_keys` (superusers have it): "add API key" alone
makes user keys only. Revoking needs "change API key".
"""

import secrets

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.template.response import TemplateResponse
from django.utils import timezone

from keys.models import ApiKey
from keys.services import api_key_create, api_key_revoke, api_key_validate

# Session entry: form tokens of the last keys this user created -> their ids.
CREATED_TOKENS_SESSION_KEY = "keys_created_tokens"
CREATED_TOKENS_KEPT = 20


# What the add and the change forms both set (the role is set once, at creation).
SETTABLE_FIELDS = [
    "rate_limit",
    "token_quota",
    "max_concurrent",
    "priority",
    "tokens_per_minute",
    "expires_at",
    "allowed_models",
]


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
    # Drawn when the form is shown and sent back with it: a second POST of the same form (a
    # reload of the "created" page) is recognised and creates nothing.
    creation_token = forms.CharField(widget=forms.HiddenInput, required=False)
    # Set by ApiKeyAdmin.get_form from the user's permissions.
    may_create_admin_keys = False

    class Meta:
        model = ApiKey
        fields = ["name", "role", *SETTABLE_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["creation_token"].initial = secrets.token_urlsafe(16)
        if not self.may_create_admin_keys:
            self.fields["role"].choices = [(ApiKey.Role.USER, ApiKey.Role.USER.label)]
            self.fields["role"].help_text = "Admin keys need the 'manage admin keys' permission."

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                api_key_validate(**self.key_fields())
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field, errors)
        return cleaned

    def key_fields(self) -> dict:
        """What the key is made of: the cleaned data without the form's own token."""
        return {k: v for k, v in self.cleaned_data.items() if k != "creation_token"}


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
        fields = ["name", *SETTABLE_FIELDS]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # Short columns, so that the list fits a laptop screen (1366 px) beside the filters; the
    # creation time is on the key's page and in the filter.
    list_display = [
        "name",
        "preview",
        "role",
        "active",
        "per_hour",
        "tokens_per_day",
        "last_used",
        "expires",
    ]
    list_filter = ["role", "priority", "is_active", "created_at"]
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

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active(self, obj):
        return obj.is_active

    @admin.display(description="per hour", ordering="rate_limit")
    def per_hour(self, obj):
        return obj.rate_limit

    @admin.display(description="tokens / day", ordering="token_quota")
    def tokens_per_day(self, obj):
        return None if obj.token_quota is None else _compact(obj.token_quota)

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj):
        return _when(obj.last_used_at)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, obj):
        return _when(obj.expires_at)

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = ApiKeyChangeForm if obj else ApiKeyCreateForm
        form = super().get_form(request, obj, change=change, **kwargs)
        # A class made for this request by modelform_factory: setting it here is not shared.
        form.may_create_admin_keys = request.user.has_perm("keys.manage_admin_keys")
        return form

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def has_delete_permission(self, request, obj=None):
        # Keys are revoked, never deleted: their usage history stays attributable.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, raw = api_key_create(
            **form.key_fields(), created_by=f"admin:{request.user.get_username()}"
        )
        for f in ApiKey._meta.concrete_fields:
            setattr(obj, f.attname, getattr(created, f.attname))
        # Shown on the next page only; never put in messages, which may live in the session.
        request._created_raw_key = raw
        # The session remembers which key the form's token made (never the key itself).
        token = form.cleaned_data.get("creation_token")
        if token:
            made = request.session.get(CREATED_TOKENS_SESSION_KEY, {})
            made[token] = created.pk
            request.session[CREATED_TOKENS_SESSION_KEY] = dict(
                list(made.items())[-CREATED_TOKENS_KEPT:]
            )

    def add_view(self, request, form_url="", extra_context=None):
        if request.method == "POST":
            token = request.POST.get("creation_token", "")
            made = request.session.get(CREATED_TOKENS_SESSION_KEY, {}).get(token)
            if token and made is not None:
                # The same form again (a reload of the "created" page): nothing new is made.
                if not self.has_add_permission(request):
                    raise PermissionDenied
                key = ApiKey.objects.filter(pk=made).first()
                return self._created_page(request, key, raw_key=None)
        return super().add_view(request, form_url, extra_context)

    def response_add(self, request, obj, post_url_continue=None):
        return self._created_page(request, obj, raw_key=request._created_raw_key)

    def _created_page(self, request, key, *, raw_key):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "key": key,
            "raw_key": raw_key,
        }
        response = TemplateResponse(request, "admin/keys/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys (final)", permissions=["change"])
    def revoke(self, request, queryset):
        count = 0
        for key in queryset.filter(is_active=True):
            api_key_revoke(preview=key.preview)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


def _when(moment) -> str | None:
    """A short local time: the admin's long dates make the list wider than a laptop."""
    return None if moment is None else f"{timezone.localtime(moment):%Y-%m-%d %H:%M}"


def _compact(number: int) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if number >= size and number % (size // 1000) == 0:
            return f"{number / size:g}{suffix}"
    return f"{number:,}"
