"""Operating the gateway: readiness, graceful drain, and the `/readyz` and `/metrics` routes.

Drain (DESIGN §4 "Operations"): on SIGTERM or SIGINT `/readyz` turns 503 at once; new
requests are still served for `server.drain_delay` (so load balancers notice), then the
listener closes (aiohttp's runner stops its sites and closes idle keep-alive
connections); requests in flight, streams included, have `server.shutdown_grace` to
finish. What is still running then is cancelled with `cut_off` set, which the journey
turns into one SSE error event (a stream under way) or a 503 (no answer yet); then the
process exits 0. Signals after the first are logged and ignored: a terminal's Ctrl-C
reaches the workers of `--workers N` both directly and through the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import MethodNotAllowed, UnknownURL
from .replies import error_response, request_id_of

if TYPE_CHECKING:
    from .app import GatewayState

log = logging.getLogger("relaygate")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How long requests cancelled at the end of the grace may take to write their last event.
CUT_OFF_WAIT = 5.0
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """Requests in flight, and the drain that waits for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.draining = False
        #: Set when the grace ran out: a cancelled request ends with ShuttingDown, not as a client that left.
        self.cut_off = False
        self._idle = asyncio.Event()

    def count(self) -> int:
        return len(self.tasks)

    def track(self) -> asyncio.Task[object] | None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        return task

    def untrack(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            self.tasks.discard(task)
        if self.draining and not self.tasks:
            self._idle.set()

    # -------------------------------------------------------------- the drain

    def install(self, gateway: GatewayState) -> None:
        """Take SIGTERM and SIGINT from aiohttp (whose handlers stop at once)."""
        loop = asyncio.get_running_loop()
        for signum in DRAIN_SIGNALS:
            loop.add_signal_handler(signum, self.begin, gateway, signum)

    def begin(self, gateway: GatewayState, signum: int = signal.SIGTERM) -> None:
        """Readiness 503 now; stop the server (see `finish`) after `server.drain_delay`."""
        name = signal.Signals(signum).name
        if self.draining:
            log.info("%s: already draining", name)
            return
        self.draining = True
        delay = gateway.current.config.server.drain_delay if gateway.runtime is not None else 0.0
        log.info("%s: draining (readiness 503; the listener closes in %g s)", name, delay)
        asyncio.get_running_loop().call_later(delay, _stop_serving)

    async def finish(self, grace: float) -> None:
        """Wait up to `grace` for the requests in flight; cut off the rest (the listener is closed)."""
        if self.tasks:
            log.info("waiting up to %g s for %d requests in flight", grace, len(self.tasks))
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        if self.tasks:
            log.warning("shutdown grace of %g s is over: ending %d requests in flight", grace, len(self.tasks))
            self.cut_off = True
            pending = list(self.tasks)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CUT_OFF_WAIT)
        log.info("drained")


def _stop_serving() -> None:
    """Stop `web.run_app` as its own signal handler does (a SystemExit out of the loop)."""
    raise web.GracefulExit()


# ---------------------------------------------------------------- routes


def _get_only(request: web.Request) -> web.Response | None:
    if request.method in ("GET", "HEAD"):
        return None
    err = MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use GET.")
    return error_response(err, request_id_of(request))


def readyz(gateway: GatewayState) -> Handler:
    """200 once config, plugins and providers are started; 503 while starting and draining."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if (refused := _get_only(request)) is not None:
            return refused
        rid = {"x-request-id": request_id_of(request)}
        if gateway.runtime is not None and not gateway.drain.draining:
            return web.json_response({"status": "ready"}, headers=rid)
        state = "draining" if gateway.drain.draining else "starting"
        error = {"message": f"The gateway is {state}.", "type": "server_error", "param": None, "code": state}
        return web.json_response({"error": error}, status=503, headers=rid)

    return handle


def metrics(gateway: GatewayState) -> Handler:
    """The Prometheus exposition; an unknown URL under `telemetry.metrics: false`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        registry = gateway.runtime.metrics if gateway.runtime is not None else None
        if registry is None:
            return error_response(UnknownURL(request.method, request.path), request_id_of(request))
        if (refused := _get_only(request)) is not None:
            return refused
        registry.flush()  # on the event loop, where requests add to it
        # Off the event loop: with many series (or many workers' files) it takes milliseconds.
        body, content_type = await asyncio.to_thread(registry.render, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle
