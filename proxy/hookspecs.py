"""Every hook relaygate calls, and nothing else.

pluggy declares and discovers; the core runs. At startup and on every config reload the
core resolves each per-request stage once into an ordered list of implementations
(pluggy's call order: last registered first, `tryfirst`/`trylast` pick the bucket) and
awaits them directly (`proxy.server.chain.Chain`, one typed attribute per stage). An
implementation may be a plain function or a coroutine function. No hook is ever called
per streamed chunk.

A spec marked `firstresult=True` is "first non-None result wins": implementations are
called in order until one returns something other than None; that value is the stage's
result and the rest are skipped. The core reads the mark from the spec itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .types import Call, Client, Target
    from .upstream.provider import RegisterProvider

PROJECT = "relaygate"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The per-request stages, in the order the core runs them.
STAGES = ("authenticate", "route", "rewrite_request", "inject_guardrails", "log_request")


# ------------------------------------------------------------------ startup


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Register provider types.

    Called by the core once per plugin manager (startup, `check`, reload), synchronously,
    before the config's `providers:` blocks are built.

    :param register: ``register("bedrock", BedrockProvider)`` makes ``type: bedrock``
        available in YAML. A ``"module:Class"`` string instead of the class defers the
        import until a config uses the type (for providers with heavy SDKs). Registering
        a type twice is a startup error.
    :return: nothing.
    """


# ------------------------------------------------------------------ per request


@hookspec(firstresult=True)
def authenticate(call: Call) -> Client | None:
    """Decide who is calling.

    Called by the core for every request (models listing included), sync or async,
    from the headers alone: before the body is read (``call.body`` is None), so a
    keyless client is refused before it can hold the connection with a slow body.
    The core checks the key's model allow-list once the body names the model.
    First non-None result wins.

    :param call: the request; read ``call.headers``, ``call.config``.
    :return: the `Client` to act as, or None to let the next implementation decide.
        Raise `AuthenticationFailed` (401) or `PermissionDenied` (403) to refuse.
        If every implementation returns None, the request is refused with 401.
    """


@hookspec(firstresult=True)
def route(call: Call) -> list[Target] | None:
    """Pick the upstream attempts for a model call, in fallback order.

    Called by the core for chat, completions, embeddings, responses and pass-through requests,
    sync or async, after `authenticate` (``call.client`` is set).
    First non-None result wins.

    :param call: the request; ``call.model`` is the client-facing model name (None for
        pass-through routes whose body names no model).
    :return: a non-empty list of `Target`, or None to let the next implementation
        decide. If every implementation returns None the request fails with 404.
    """


@hookspec
def rewrite_request(call: Call) -> None:
    """Edit what goes upstream: defaults, caps, extra headers.

    Called by the core once per model call, sync or async, after `route`
    (``call.targets`` is set). Every implementation runs.

    :param call: edit ``call.edit_body()`` (marks the body as changed, so it is
        re-serialised) and ``call.upstream_headers``; per-target changes belong on each
        ``Target``'s ``headers`` / ``body_extra``.
    :return: nothing. Raise a `GatewayError` to refuse the request.
    """


@hookspec
def inject_guardrails(call: Call, target: Target) -> None:
    """Apply guardrails to one upstream attempt, or refuse it.

    Called by the core before each attempt (so once more per fallback), sync or async,
    after `rewrite_request`. Every implementation runs.

    :param call: the request.
    :param target: the attempt about to be sent; ``target.guardrail`` holds the route's
        `guardrail:`. Set it, clear it, or render it into ``target.headers`` /
        ``target.body_extra`` for providers that take it that way.
    :return: nothing. Raise a `GatewayError` to refuse.
    """


@hookspec
def log_request(call: Call) -> None:
    """Record a finished request.

    Called by the core once per request after the response has ended (a stream's last
    byte written, or the client gone), sync or async; failures here are logged and never
    reach the client. Every implementation runs.

    :param call: the finished request: ``status``, ``usage``, ``fallbacks``,
        ``first_byte``, ``error``, ``client`` and ``target`` are filled in.
    :return: nothing.
    """
