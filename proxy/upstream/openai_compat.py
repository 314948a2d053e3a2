"""Forwarding to any OpenAI-compatible HTTP server.

The generic `type: openai` provider is this class as it is; Azure, Vertex and Bedrock's
OpenAI endpoint subclass it and override the few extension points below (URL, auth,
body, stream filter, error body) instead of copying the forwarding.

The hot path sends the client's own bytes when nothing changed, relays upstream bytes
as they arrive and parses only what the log needs: the one usage object.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import orjson

from ..config.load import parse_size
from ..config.options import Options
from ..errors import (
    GatewayError,
    error_for_status,
)
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH, RESPONSES, Call, ModelInfo, Reply, Target, Usage
from .cache import TTLCache
from .provider import Provider
from .seam import Upstream
from .sse import DEFAULT_MAX_EVENT, complete_events
from .transport import Response

log = logging.getLogger("relaygate.upstream")

#: Client headers worth forwarding on pass-through; everything else (credentials,
#: cookies, hop-by-hop, host) stays at the gateway.
FORWARDED_HEADERS = ("Content-Type", "Accept", "OpenAI-Beta", "Idempotency-Key")
_FORWARDED = tuple((name.lower(), name) for name in FORWARDED_HEADERS)
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_DONE_TAILS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n")
#: The events that end a Responses API stream (it has no [DONE]).
_RESPONSES_ENDS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"', b"event: error")
_MODELS_TTL = 300.0

StreamFilter = Callable[[bytes], bytes]


#: Outgoing headers: lower-cased name -> (name as written, value). Names merge
#: case-insensitively, as HTTP wants, and go out spelled as their source spelled them.
Headers = dict[str, tuple[str, str]]


def merge_headers(headers: Headers, more: Mapping[str, str]) -> Headers:
    """Add `more` to `headers`, replacing any header of the same name in any case."""
    for name, value in more.items():
        headers[name.lower()] = (name, value)
    return headers


def parse_usage(usage: Any) -> Usage | None:
    """Chat/completions/embeddings usage, or the Responses API's (`input_tokens`, ...)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        cached if isinstance(cached, int) else 0,
    )


def openai_error_fields(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) from an OpenAI-shaped error body, where present."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if isinstance(data, list) and data:  # some servers (Vertex) wrap the error in a list
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        return None, None, None, None

    def text(key: str) -> str | None:
        value = err.get(key)
        return value if isinstance(value, str) else (str(value) if isinstance(value, int) else None)

    return text("message"), text("type"), text("param"), text("code")


class OpenAICompatibleProvider(Provider):
    """`type: openai`: any server that speaks the OpenAI HTTP API."""

    endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH})
    supports_passthrough = True
    default_base_url: str | None = None
    #: None: this provider never fetches images; else the default of `fetch_images`.
    fetch_images_default: bool | None = None

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self.upstream = Upstream(name, options, images_default=self.fetch_images_default)
        self.base_url: str = options.url("base_url", self.default_base_url)
        self.api_key: str | None = options.secret("api_key")
        self.extra_headers: dict[str, str] = dict(options.str_map("headers", {}))
        #: Ask the upstream for the usage chunk on streams (for the log); off for servers
        #: that reject `stream_options`.
        self.stream_usage: bool = options.bool("stream_usage", True)
        self.models_ttl: float = options.number("models_ttl", _MODELS_TTL)
        #: A server-sent event larger than this ends the stream with an error.
        self.max_event_size: int = max(1024, parse_size(options, "max_event_size", DEFAULT_MAX_EVENT))
        self.models: TTLCache[list[ModelInfo]] = TTLCache(
            self.models_ttl, [], what=f"provider {name}: model listing", errors=(GatewayError, ValueError)
        )
        self._static_headers: Headers = {}

    async def close(self) -> None:
        await self.upstream.close()

    async def start(self) -> None:
        await self.upstream.start()
        # Subclasses may add to extra_headers in __init__, so they are folded in here.
        self._static_headers = merge_headers({"accept-encoding": ("Accept-Encoding", "identity")}, self.extra_headers)

    # -------------------------------------------------------------- extension points

    def url_for(self, call: Call, target: Target) -> str:
        """The upstream URL; `call.path` is the part after `/v1/`.

        Client query strings are forwarded on pass-through routes only: on the model
        endpoints they are the client's business (an Azure-style client's api-version).
        """
        url = f"{self.base_url}/{call.path}"
        if call.query_string and call.endpoint == PASSTHROUGH:  # e.g. GET /v1/files?purpose=...
            return f"{url}?{call.query_string}"
        return url

    async def auth_headers(self, target: Target | None) -> Mapping[str, str]:
        """The upstream credential headers (awaitable, for tokens that refresh); no target when listing models."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def refresh_credentials(self) -> bool:
        """Called once on an upstream 401; return True to retry the request once."""
        return False

    async def body_for(self, call: Call, target: Target) -> bytes:
        """The upstream body bytes. Streams ask for usage so the log can count tokens."""
        if call.body is None:
            return call.raw_body
        if call.stream and self.stream_usage and call.endpoint in (CHAT, COMPLETIONS) and not call.include_usage:
            opts = call.body.get("stream_options")
            merged = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
            return call.upstream_body(target, stream_options=merged)
        return call.upstream_body(target)

    def stream_filter(self, call: Call, target: Target) -> StreamFilter | None:
        """An optional transform of each block of whole SSE events (Azure's quirks)."""
        return None

    def error_for(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        """Turn an upstream error response into the error the client sees."""
        message, etype, param, code = openai_error_fields(body)
        extra: dict[str, str] = {}
        if status in (401, 403):
            # The upstream rejected the gateway's own credentials: say so without echoing
            # anything (OpenAI quotes part of the key in its message).
            message = f"provider {self.name!r} rejected the gateway's credentials (upstream HTTP {status})"
            etype, param, code = None, None, "upstream_auth_failed"
        elif status in (429, 503):  # both may say when to come back; retries honour it
            retry = headers.get("retry-after")
            if retry:
                extra["retry-after"] = retry
        if not message:
            message = f"provider {self.name!r} answered HTTP {status}"
        return error_for_status(status, message, param=param, code=code, wire_type=etype, headers=extra)

    # -------------------------------------------------------------- models

    async def list_models(self) -> list[ModelInfo] | None:
        return await self.models.get(self._fetch_models)

    async def _fetch_models(self) -> list[ModelInfo]:
        headers = merge_headers(self._static_headers.copy(), await self.auth_headers(None))
        resp = await self.upstream.request("GET", f"{self.base_url}/models", headers.values())
        if resp.status != 200:
            resp.close()
            raise ValueError(f"HTTP {resp.status}")
        data = orjson.loads(await self.upstream.read_body(resp))
        items = data.get("data") if isinstance(data, dict) else None
        return [
            ModelInfo(m["id"], m.get("owned_by") or self.name, m.get("created") or 0)
            for m in items or ()
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    # -------------------------------------------------------------- sending

    async def send(self, call: Call, target: Target) -> Reply:
        headers = self._static_headers.copy()
        client_headers = call.headers
        for key, name in _FORWARDED:
            value = client_headers.get(key)
            if value is not None:
                headers[key] = (name, value)
        if call.endpoint != PASSTHROUGH:
            headers["content-type"] = ("Content-Type", "application/json")
        if call.upstream_headers:
            merge_headers(headers, call.upstream_headers)
        if target.headers:
            merge_headers(headers, target.headers)
        body = await self.body_for(call, target) if call.method not in ("GET", "HEAD") else None
        url = self.url_for(call, target)

        auth = await self.auth_headers(target)
        merge_headers(headers, auth)
        upstream = self.upstream
        resp = await upstream.request(call.method, url, headers.values(), body)
        if resp.status == 401:
            try:
                retry = await self.refresh_credentials()
            except BaseException:
                resp.close()
                raise
            if retry:
                resp.close()
                auth = await self.auth_headers(target)
                merge_headers(headers, auth)
                resp = await upstream.request(call.method, url, headers.values(), body)

        if resp.status >= 400:
            err = self.error_for(resp.status, await upstream.error_body(resp), resp.headers)
            raise upstream.finish_error(err, resp.headers, self._secrets(auth))
        relayed = upstream.relayed_headers(resp.headers) or None

        content_type = resp.headers.get("content-type", "application/json")
        if call.endpoint == PASSTHROUGH and not content_type.startswith("application/json"):
            return Reply(resp.status, stream=upstream.chunks(resp), content_type=content_type, headers=relayed)
        if call.stream and content_type.startswith("text/event-stream"):
            return Reply(
                resp.status,
                stream=self._relay_events(call, target, resp),
                content_type="text/event-stream",
                headers=relayed,
            )
        data = await upstream.read_body(resp)
        if call.endpoint != PASSTHROUGH or (call.method == "POST" and call.model is not None):
            # Pass-through generations (a model named) are counted and priced too; a GET of a
            # stored object (a batch, a response) carries usage that was spent before.
            call.usage = self._usage_of(data)
        return Reply(resp.status, body=data, content_type=content_type, headers=relayed)

    def _secrets(self, auth: Mapping[str, str]) -> list[str]:
        """What must never be relayed back: the key and the credential just sent."""
        found = [value.rpartition(" ")[2] for value in auth.values()]
        if self.api_key:
            found.append(self.api_key)
        return found

    @staticmethod
    def _usage_of(data: bytes) -> Usage | None:
        """The answer's usage object, for the log, without parsing what comes before it.

        `{` + the bytes from the last `"usage"` on is valid JSON only when that key is
        top-level (a nested one leaves unbalanced closers), so an embedding's vectors
        or a long completion are not parsed just to count tokens.
        """
        at = data.rfind(b'"usage"')
        if at < 0:
            return None
        try:
            parsed = orjson.loads(b"{" + data[at:])
        except orjson.JSONDecodeError:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
        return parse_usage(parsed.get("usage")) if isinstance(parsed, dict) else None

    async def _relay_events(self, call: Call, target: Target, resp: Response) -> AsyncGenerator[bytes, None]:
        """Relay SSE bytes; only the rare block holding a usage object is parsed.

        `[DONE]` ends the relay: a server that lingers before closing its connection
        does not hold the client's response open (its connection is then not reused).
        """
        want_usage = call.include_usage
        scan = call.endpoint != RESPONSES  # the Responses API's usage is read by proxy.responses; no [DONE]
        transform = self.stream_filter(call, target)
        chunks = self.upstream.chunks(resp)
        events = complete_events(chunks, self.max_event_size, self.name)
        try:
            async for block in events:
                done = block.endswith(_DONE_TAILS) if scan else any(end in block for end in _RESPONSES_ENDS)
                if scan and (_USAGE_MARKERS[0] in block or _USAGE_MARKERS[1] in block):
                    block = self._take_usage(call, block, want_usage)
                if transform is not None:
                    block = transform(block)
                if block:
                    yield block
                if done:
                    break
        finally:
            await events.aclose()
            await chunks.aclose()

    @staticmethod
    def _take_usage(call: Call, block: bytes, keep: bool) -> bytes:
        """Record the usage object; hide it when the client did not ask for it.

        Only the event holding the marker is cut out and parsed: a reader that fell
        behind gets a whole stream in one block, and the rest of it passes as it is.
        """
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        pos = 0
        while (at := _find_usage(block, pos)) >= 0:
            begin = block.rfind(b"\n\n", pos, at)
            begin = pos if begin < 0 else begin + 2
            end = block.find(b"\n\n", at)
            end = len(block) if end < 0 else end + 2
            out.append(block[pos:begin])
            out.append(_usage_event(call, block[begin:end], keep))
            pos = end
        out.append(block[pos:])
        return b"".join(out)


def _find_usage(block: bytes, start: int) -> int:
    """Where the next usage object starts in `block`, or -1."""
    a = block.find(_USAGE_MARKERS[0], start)
    b = block.find(_USAGE_MARKERS[1], start)
    return b if a < 0 or 0 <= b < a else a


def _usage_event(call: Call, ev: bytes, keep: bool) -> bytes:
    """One event carrying usage: recorded; dropped (or its usage nulled) unless kept."""
    if not ev.startswith(b"data:"):
        return ev
    try:
        chunk = orjson.loads(ev[5:])
    except orjson.JSONDecodeError:
        return ev
    if not isinstance(chunk, dict):
        return ev
    usage = parse_usage(chunk.get("usage"))
    if usage is not None:
        call.usage = usage
    if keep:
        return ev
    if chunk.get("choices"):  # a content chunk that also carries usage: keep the content
        chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
    return b""
