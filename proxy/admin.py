from django.contrib import admin

from proxy.backends import backend_pool
from proxy.models import Backend


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
