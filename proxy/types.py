"""The typed objects that travel through the hook chain.

One `Call` per client request; one `Target` per upstream attempt (a fallback is a new
`Target`). Hooks and providers read and edit these instead of free-form dicts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from .config.load import Config, Route
    from .errors import ErrorType
    from .limits.admission import Admission
    from .telemetry.tracing import CallTrace
    from .upstream.provider import Provider

# Endpoint names: what the client asked for, independent of the URL it used.
CHAT = "chat/completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"
MODELS = "models"
PASSTHROUGH = "passthrough"
UNMATCHED = "unmatched"  # a path no route serves (404); `Call.path` is then the whole request path
MODEL_ENDPOINTS = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})


@dataclass(slots=True, frozen=True)
class Client:
    """Who is calling, as decided by the `authenticate` stage."""

    name: str
    models: tuple[str, ...] | None = None  # globs of client-facing model names; None = all

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatchcase(model, g) for g in self.models)


@dataclass(slots=True, frozen=True)
class Guardrail:
    """A provider-neutral guardrail; each provider renders it in its own wire form."""

    id: str
    version: str
    trace: str | None = None  # "enabled" | "disabled" | "enabled_full" (the YAML may use any case)
    tag_suffix: str | None = None
    stream_processing_mode: str | None = None  # "sync" | "async" (Converse streams)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0  # every input token, cached ones included (OpenAI's prompt_tokens)
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ModelInfo:
    id: str
    owned_by: str
    created: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


@dataclass(slots=True)
class Target:
    """One upstream attempt: which provider, which upstream model, and what to add.

    Built fresh per request by the `route` stage, so hooks may edit `headers` and
    `body_extra` (merged into the upstream JSON body) without touching shared state.
    """

    provider: Provider
    model: str
    route: Route | None = None
    guardrail: Guardrail | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # route target extras (endpoint_id, ...)
    headers: dict[str, str] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # the route target's `weight` (strategy: weighted)

    @property
    def provider_name(self) -> str:
        return self.provider.name


@dataclass(slots=True)
class Attempt:
    """One try of one target: what the log, the metrics and the traces report per attempt.

    A fallback is a new target's first attempt; a retry is another attempt on the same
    target (`retry` counts them from 0).
    """

    provider: str
    model: str
    retry: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    status: int = 0  # the upstream's status (or the mapped error's); 0 before an answer
    error_type: ErrorType | None = None  # None: it succeeded (or is still running)


@dataclass(slots=True)
class Reply:
    """What a provider hands back: a whole JSON body, or a stream of SSE bytes.

    `stream` is an async generator; the core closes it (and so the upstream response)
    when the client leaves or the stream fails.
    """

    status: int = 200
    body: bytes | None = None
    stream: AsyncGenerator[bytes, None] | None = None
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"


@dataclass(slots=True, eq=False)
class Call:
    """One client request on its way through the chain."""

    request_id: str
    endpoint: str  # CHAT, COMPLETIONS, EMBEDDINGS, MODELS, PASSTHROUGH or UNMATCHED
    method: str
    path: str  # the path after /v1/, e.g. "chat/completions" or "audio/speech" (UNMATCHED: "/whole/path")
    query_string: str
    headers: CIMultiDictProxy[str]
    config: Config
    raw_body: bytes = b""
    body: dict[str, Any] | None = None
    model: str | None = None
    stream: bool = False
    client: Client | None = None
    targets: list[Target] = field(default_factory=list)
    target: Target | None = None  # the attempt in flight
    upstream_headers: dict[str, str] = field(default_factory=dict)
    # What the log stage reports.
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    status: int = 0
    usage: Usage | None = None
    fallbacks: list[str] = field(default_factory=list)  # "provider: reason" per failed attempt
    attempts: list[Attempt] = field(default_factory=list)  # every try, in order
    #: Every limit that said no, as (scope, kind): ("key"|"route"|"provider",
    #: "requests"|"tokens"|"concurrency"|"budget"); a full provider quota that moved the
    #: request to another target is here although the request went on.
    rejections: list[tuple[str, str]] = field(default_factory=list)
    cost_usd: float | None = None  # from the route's price, once the usage is known
    #: What the limits reserved for this request (None: no limit applies); settled at the end.
    admission: Admission | None = None
    error: str | None = None  # the error's code (or OpenAI type) for the access log
    error_type: ErrorType | None = None  # the closed set of proxy.errors; None on success
    body_dirty: bool = False
    trace: CallTrace | None = None  # the request's spans, when `telemetry.otlp` is set

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the usage chunk on a stream."""
        opts = self.body.get("stream_options") if self.body else None
        return isinstance(opts, dict) and opts.get("include_usage") is True

    def edit_body(self) -> dict[str, Any]:
        """The body to edit in place; marks it so the raw bytes are no longer sent."""
        if self.body is None:
            self.body = {}
        self.body_dirty = True
        return self.body

    def upstream_body(self, target: Target, **overrides: Any) -> bytes:
        """The JSON bytes to send upstream for `target`.

        The client's own bytes are reused untouched when nothing differs, which is
        the common pass-through case; otherwise one orjson dump of a shallow copy.
        """
        body = self.body
        if body is None:
            return self.raw_body
        if not self.body_dirty and not overrides and not target.body_extra and body.get("model") == target.model:
            return self.raw_body
        out = dict(body)
        out["model"] = target.model
        out.update(target.body_extra)
        out.update(overrides)
        return orjson.dumps(out)
