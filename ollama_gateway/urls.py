from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from ollama_gateway import docs, views

admin.site.site_header = "ollama-gateway administration"
admin.site.site_title = "ollama-gateway admin"
admin.site.index_title = "Keys, usage and Ollama servers"
# "View site" would open the JSON service description.
admin.site.site_url = None

urlpatterns = [
    path("", views.ServiceInfoView.as_view(), name="service-info"),
    path("health", views.HealthView.as_view(), name="health"),
    path("admin/", admin.site.urls),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    # Split: Swagger UI's start script is a file (/docs?script=), not inline, for the CSP.
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    # ReDoc and its bundle with nothing from other hosts (fonts, logo): see ollama_gateway/docs.py.
    path("redoc", docs.RedocView.as_view(url_name="schema"), name="redoc"),
    path("redoc/redoc.standalone.js", docs.redoc_script, name="redoc-script"),
    path("", include("keys.urls")),
    path("", include("usage.urls")),
    path("", include("proxy.urls")),
]

handler400 = "ollama_gateway.errors.handler400"
handler404 = "ollama_gateway.errors.handler404"
handler500 = "ollama_gateway.errors.handler500"
