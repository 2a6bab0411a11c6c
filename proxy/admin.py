import logging

from django.contrib import admin
from django.forms.models import model_to_dict

from proxy.backends import backend_pool
from proxy.models import Backend

# Who points the pool where: every change is logged here, besides the admin's own history.
logger = logging.getLogger("proxy.backends.audit")
_AUDITED = ["name", "url", "weight", "enabled", "credential_env"]


def _log_change(request, action: str, backend: Backend, changes: dict) -> None:
    logger.warning(
        "backend %s: %s by %s: %s",
        action,
        backend.name,
        request.user.get_username(),
        changes,
        extra={
            "backend": backend.name,
            "backend_action": action,
            "staff_user": request.user.get_username(),
            "client_addr": getattr(request, "client_addr", None),
        },
    )


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "url",
        "weight",
        "parallel",
        "enabled",
        "state",
        "loaded_models",
        "in_flight",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "url"]

    def save_model(self, request, obj, form, change):
        before = model_to_dict(Backend.objects.get(pk=obj.pk), _AUDITED) if change else {}
        super().save_model(request, obj, form, change)
        after = model_to_dict(obj, _AUDITED)
        changes = {f: [before.get(f), after[f]] for f in _AUDITED if before.get(f) != after[f]}
        _log_change(request, "changed" if change else "created", obj, changes)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        _log_change(request, "deleted", obj, model_to_dict(obj, _AUDITED))

    def delete_queryset(self, request, queryset):
        gone = list(queryset)
        super().delete_queryset(request, queryset)
        for obj in gone:
            _log_change(request, "deleted", obj, model_to_dict(obj, _AUDITED))

    def _state(self, obj):
        return backend_pool().by_name(obj.name)

    @admin.display(description="state (this process)")
    def state(self, obj):
        state = self._state(obj)
        if state is None:
            return "disabled" if not obj.enabled else "pending"
        return "up" if state.healthy else "down"

    @admin.display(description="loaded models")
    def loaded_models(self, obj):
        state = self._state(obj)
        return ", ".join(sorted(state.loaded)) if state else ""

    @admin.display(description="in flight")
    def in_flight(self, obj):
        state = self._state(obj)
        return state.in_flight if state else 0
