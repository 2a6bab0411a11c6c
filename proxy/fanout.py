"""Requests that go to every Ollama server: merged model lists and model management.

Lists (`/api/tags`, `/api/ps`, `/v1/models`) are asked of every usable server at once and merged
without duplicates, filtered by the key's allowlist. Model management (pull, push, create, copy,
delete) without `?backend=` goes to each server in turn; progress lines carry a `backend` field.
"""

import asyncio
import json
import time

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from ollama_gateway import runtime
from ollama_gateway.errors import error_response
from proxy import upstream
from proxy.backends import CHECK_TIMEOUT

PROGRESS_ROUTES = ("/api/pull", "/api/push", "/api/create")


async def _send(state, method, path, **kwargs):
    return await upstream.send(state.url, state.upstream.api_key, method, path, **kwargs)


async def _listed(state, path, field):
    """A server's list, or None if it could not give one."""
    try:
        reply = await _send(state, "GET", path, read_timeout=sum(CHECK_TIMEOUT))
    except (upstream.UpstreamUnreachable, upstream.UpstreamTimeout):
        return None
    try:
        if not reply.ok:
            return None
        payload = json.loads(await reply.read())
        return payload if isinstance(payload.get(field), list) else None
    except (upstream.UpstreamUnreachable, upstream.UpstreamTimeout, ValueError, AttributeError):
        return None
    finally:
        await reply.aclose()


async def merged(request, pool, path, filter_list, surface):
    """A list route over several servers: their lists merged, without duplicates."""
    field, name_key = filter_list
    now = time.monotonic()
    states = [s for s in pool.states if s.usable(now)]
    answers = await asyncio.gather(*(_listed(s, path, field) for s in states))
    entries, payload = {}, None
    for answer in answers:
        if answer is None:
            continue
        payload = answer
        for entry in answer[field]:
            entries.setdefault(str(entry.get(name_key, "")), entry)
    if payload is None:
        return error_response(surface, 502, upstream.UNREACHABLE)
    request.exchange.backend = "*"
    payload[field] = [
        entry for name, entry in sorted(entries.items()) if request.user.allows_model(name)
    ]
    return JsonResponse(payload)


async def fan_out(request, states, path: str, body: bytes):
    """Send one model-management request to every server, one after the other."""
    payload = json.loads(body) if body else {}
    # Only these answer with progress streams; copy and delete answer once.
    streamed = path in PROGRESS_ROUTES and payload.get("stream", True) is not False
    headers = {"Content-Type": "application/json", "X-Request-ID": request.request_id}

    async def send(state):
        return await _send(state, request.method, path, data=body or None, headers=headers)

    if not streamed:
        results = []
        for state in states:
            try:
                reply = await send(state)
                try:
                    text = (await reply.read()).decode(errors="replace")
                finally:
                    await reply.aclose()
                results.append({"backend": state.name, "status": reply.status, "body": text})
            except (upstream.UpstreamUnreachable, upstream.UpstreamTimeout):
                results.append({"backend": state.name, "status": 502, "body": upstream.UNREACHABLE})
        failed = [r for r in results if not 200 <= r["status"] < 300]
        if failed:
            message = "; ".join(f"{r['backend']}: {r['body'].strip()}" for r in failed)
            return JsonResponse({"error": message, "backends": results}, status=failed[0]["status"])
        return JsonResponse({"status": "success", "backends": results})

    async def progress():
        failures = []
        for state in states:
            try:
                reply = await send(state)
            except (upstream.UpstreamUnreachable, upstream.UpstreamTimeout):
                failures.append(f"{state.name}: could not reach Ollama")
                continue
            try:
                async for line in _lines(reply):
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("not a progress line")
                    event = {**event, "backend": state.name}
                    if "error" in event:
                        failures.append(f"{state.name}: {event['error']}")
                    elif event.get("status") != "success":
                        yield json.dumps(event).encode() + b"\n"
                if not reply.ok and not failures:
                    failures.append(f"{state.name}: status {reply.status}")
            except (upstream.UpstreamUnreachable, upstream.UpstreamTimeout, ValueError):
                failures.append(f"{state.name}: could not reach Ollama")
            finally:
                await reply.aclose()
        final = {"error": "; ".join(failures)} if failures else {"status": "success"}
        yield json.dumps(final).encode() + b"\n"

    if not runtime.serving():
        # A per-request loop ends with the view (see ProxyView.stream).
        content = b"".join([chunk async for chunk in progress()])
        return HttpResponse(content, content_type="application/x-ndjson")
    return StreamingHttpResponse(progress(), content_type="application/x-ndjson")


async def _lines(reply):
    tail = b""
    async for chunk in reply.chunks():
        *lines, tail = (tail + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if tail.strip():
        yield tail
