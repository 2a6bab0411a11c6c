"""The model API. Ollama's account and cloud routes (/api/me, /api/signout, /api/user/keys/*,
/api/experimental/web_search, web_fetch, model-recommendations) are refused with 403 for every
key: they act on the server owner's ollama.com identity (see IdentityRouteView)."""

from asgiref.sync import markcoroutinefunction
from django.urls import path, re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers

from proxy.views import (
    AdminProxyView,
    AnthropicProxyView,
    CountTokensView,
    IdentityRouteView,
    OpenAIModelView,
    OpenAIProxyView,
    ProxyView,
    ResponsesProxyView,
    TranscriptionProxyView,
)

TAGS = {ProxyView: "Ollama", AdminProxyView: "Model management (admin keys)"}

# What the gateway itself checks in a body naming a model; every other field goes to Ollama as is.
MODEL_REQUEST = inline_serializer(
    "ModelRequest",
    {
        "model": serializers.CharField(help_text="A model this key may use."),
        "stream": serializers.BooleanField(
            required=False, help_text="Native routes stream unless false; /v1 routes only if true."
        ),
    },
)


# The multipart upload of /v1/audio/transcriptions: the gateway reads `model`, Ollama the rest.
TRANSCRIPTION_REQUEST = inline_serializer(
    "TranscriptionRequest",
    {
        "model": serializers.CharField(help_text="A model this key may use."),
        "file": serializers.FileField(help_text="The audio, at most 25 MiB."),
        "response_format": serializers.CharField(required=False, help_text="json or text"),
        "language": serializers.CharField(required=False),
        "prompt": serializers.CharField(required=False),
    },
)


def route(url, view, summary, *, upstream=None, methods=("post",), regex=False, **attrs):
    """The URL pattern of one relayed route, documented in the OpenAPI schema.

    `upstream` is the path on Ollama (default: the same path); `attrs` set ProxyView options.
    """
    upstream = upstream or "/" + url
    if issubclass(view, OpenAIProxyView):
        tag = "OpenAI-compatible"
    elif issubclass(view, AnthropicProxyView):
        tag = "Anthropic-compatible"
    else:
        tag = TAGS[view]
    body = OpenApiTypes.BINARY if attrs.get("raw_body") else OpenApiTypes.OBJECT
    if attrs.get("names_model"):
        body = MODEL_REQUEST
    if view.multipart:
        body = {"multipart/form-data": TRANSCRIPTION_REQUEST}
    operation = url.strip("^$").split("/(")[0].replace("/", "_").replace("<path:model>", "model")
    docs = {
        method: extend_schema(
            summary=summary,
            tags=[tag],
            request=None if method in ("get", "head") else body,
            responses={200: OpenApiTypes.OBJECT},
            operation_id=f"{method}_{operation}",
        )
        for method in methods
    }
    cls = extend_schema_view(**docs)(
        type(view.__name__, (view,), {"upstream_path": upstream, **attrs})
    )
    for method in methods:
        # drf-spectacular documents an inherited handler through a plain wrapper: it returns
        # the async handler's coroutine, so it is one.
        markcoroutinefunction(getattr(cls, method))
    as_view = cls.as_view(http_method_names=list(methods))
    return (re_path if regex else path)(url, as_view)


def model_route(url, view, summary, **options):
    return route(url, view, summary, names_model=True, **options)


def generation_route(url, view, summary, **options):
    """A route that runs a model on the server: it waits for a slot (usage/queue.py)."""
    return model_route(url, view, summary, generation=True, **options)


LIST_MODELS = {"filter_list": ("models", "name"), "methods": ("get",)}

urlpatterns = [
    # Native API, any key.
    route("api/version", ProxyView, "Ollama's version", methods=("get", "head")),
    route(
        "api/tags",
        ProxyView,
        "Local models (those this key may use)",
        **{**LIST_MODELS, "methods": ("get", "head")},
    ),
    route("api/status", ProxyView, "Ollama's cloud status", methods=("get",)),
    route("api/ps", ProxyView, "Loaded models (those this key may use)", **LIST_MODELS),
    route("api/models", ProxyView, "Models this key may use", upstream="/api/tags", **LIST_MODELS),
    generation_route("api/generate", ProxyView, "Generate a completion (streams by default)"),
    generation_route("api/chat", ProxyView, "Chat (streams by default)"),
    generation_route("api/embed", ProxyView, "Embeddings"),
    generation_route("api/embeddings", ProxyView, "Embedding (legacy)"),
    model_route("api/show", ProxyView, "Model details"),
    # Model management, admin keys only.
    model_route("api/pull", AdminProxyView, "Pull a model"),
    model_route("api/push", AdminProxyView, "Push a model"),
    model_route("api/create", AdminProxyView, "Create a model"),
    model_route("api/delete", AdminProxyView, "Delete a model", methods=("delete",)),
    route("api/copy", AdminProxyView, "Copy a model"),
    route(
        r"^api/blobs/(?P<digest>sha256[:-][0-9a-fA-F]{64})$",
        AdminProxyView,
        "Check for or upload a model blob",
        upstream="/api/blobs/{digest}",
        methods=("head", "post"),
        regex=True,
        raw_body=True,
    ),
    # OpenAI-compatible API (`stream` defaults to false here).
    generation_route("v1/chat/completions", OpenAIProxyView, "Chat completions"),
    generation_route("v1/completions", OpenAIProxyView, "Completions"),
    generation_route("v1/embeddings", OpenAIProxyView, "Embeddings"),
    route("v1/models", OpenAIProxyView, "Models", methods=("get",), filter_list=("data", "id")),
    generation_route("v1/responses", ResponsesProxyView, "Responses (Codex; zstd bodies accepted)"),
    generation_route(
        "v1/audio/transcriptions",
        TranscriptionProxyView,
        "Transcribe audio (multipart, at most 25 MiB)",
    ),
    # Anthropic-compatible API (Claude Code): `?beta=true` and anthropic-* headers accepted.
    generation_route("v1/messages", AnthropicProxyView, "Messages (Anthropic)"),
    model_route(
        "v1/messages/count_tokens",
        CountTokensView,
        "Count tokens (Anthropic): 404, Ollama cannot count without generating",
    ),
    re_path(
        r"^api/(?:me|signout|user/keys(?:/.*)?|experimental/(?:web_search|web_fetch|"
        r"model-recommendations))$",
        extend_schema(exclude=True)(IdentityRouteView).as_view(),
    ),
    route(
        "v1/models/<path:model>",
        OpenAIModelView,
        "One model",
        upstream="/v1/models/{model}",
        methods=("get",),
    ),
]
