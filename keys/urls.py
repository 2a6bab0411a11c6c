from django.urls import path

from keys import views

urlpatterns = [
    path("api/keys", views.ApiKeyListCreateView.as_view(), name="api-keys"),
    path("api/keys/<str:preview>", views.ApiKeyRevokeView.as_view(), name="api-key-revoke"),
]
