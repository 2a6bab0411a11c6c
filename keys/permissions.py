from rest_framework.permissions import BasePermission


class IsApiKey(BasePermission):
    """Any valid key, admin or user."""

    def has_permission(self, request, view):
        return request.user is not None


class IsAdminKey(BasePermission):
    message = "This endpoint requires an admin API key."

    def has_permission(self, request, view):
        return request.user is not None and request.user.is_admin
