"""The aiohttp application: routes, lifecycle and reload.

Handlers stay thin: they build a `Call`, run it through the pre-resolved chain
(`proxy.forward`) and write what comes back; `Forwarder` turns every failure into
OpenAI error JSON. There is no middleware: a catch-all route answers unknown paths in
the same shape, and the hot path saves aiohttp's middleware frames.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web

from ..errors import ConfigError, MethodNotAllowed
from ..limits.config import unshared_limits
from ..responses import add_routes as add_responses_routes
from ..telemetry import Telemetry
from ..types import CHAT, COMPLETIONS, EMBEDDINGS
from . import cors, operations
from .journey import Forwarder
from .replies import error_response, request_id_of
from .runtime import Runtime, load_runtime

log = logging.getLogger("relaygate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayState:
    """App state: the current runtime and how to reload it. Lives under `STATE`."""

    def __init__(
        self, config_path: str | Path, extra_plugins: Iterable[tuple[str, object]] = (), workers: int = 1
    ) -> None:
        self.config_path = str(config_path)
        self.extra_plugins = tuple(extra_plugins)
        self.workers = workers  # processes serving this config (`--workers`): limits need Redis then
        self.runtime: Runtime | None = None
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.drain = operations.Drain()
        self.telemetry = Telemetry(self.drain.count, lambda: self.runtime)
        #: Whether answers get CORS headers (decided at start-up, when the app's hooks freeze).
        self.cors_hooked = False

    @property
    def current(self) -> Runtime:
        assert self.runtime is not None, "gateway not started"
        return self.runtime

    async def start(self, preloaded: Runtime | None = None) -> None:
        runtime = preloaded
        if runtime is None:
            runtime = await asyncio.to_thread(load_runtime, self.config_path, self.extra_plugins)
        await self._start(runtime, None)
        self.runtime = runtime
        if runtime.config.open:
            log.warning("no clients: section; the gateway is open to anyone who can reach it")

    async def _start(self, runtime: Runtime, previous: Runtime | None) -> None:
        """Start `runtime` with its telemetry; if it fails, what it opened is closed again."""
        self.telemetry.attach(runtime, previous)
        try:
            await runtime.start(previous=previous)
        except BaseException:
            await self.telemetry.release(runtime, previous)
            raise

    async def reload(self) -> bool:
        """Swap in a freshly loaded config; keep the old one if the new one is invalid."""
        if self.drain.draining:
            log.info("not reloading %s: the gateway is draining", self.config_path)
            return False
        async with self._reload_lock:
            try:
                runtime = await asyncio.to_thread(load_runtime, self.config_path, self.extra_plugins)
                problem = unshared_limits(runtime.config.has_limits, runtime.config.state.redis, self.workers)
                if problem is not None:
                    raise ConfigError(problem)
                await self._start(runtime, self.runtime)
            except ConfigError as exc:
                log.error("reload of %s refused, keeping the running config:\n%s", self.config_path, exc)
                self.telemetry.reloaded(False)
                return False
            except Exception:
                log.exception("reload of %s failed, keeping the running config", self.config_path)
                self.telemetry.reloaded(False)
                return False
            old, self.runtime = self.runtime, runtime
            log.info("reloaded %s", self.config_path)
            self.telemetry.reloaded(True)
            if runtime.config.server.cors is not None and not self.cors_hooked:
                log.warning("server.cors was off at start-up: restart the gateway to turn it on")
            if old is not None:
                runtime.took_over(old)
                task = asyncio.create_task(self._retire(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return True

    async def _retire(self, old: Runtime) -> None:
        await old.retire()
        await self.telemetry.release(old, self.runtime)

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        if self.runtime is not None:
            await self.runtime.close()
            await self.telemetry.release(self.runtime, None)
            self.runtime = None
        self.telemetry.close()


STATE = web.AppKey("gateway", GatewayState)


# ---------------------------------------------------------------- app


async def healthz(request: web.Request) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        err = MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use GET.")
        return error_response(err, request_id_of(request))
    return web.json_response({"status": "ok"}, headers={"x-request-id": request_id_of(request)})


def create_app(
    config_path: str | Path,
    *,
    extra_plugins: Iterable[tuple[str, object]] = (),
    runtime: Runtime | None = None,
    handle_sighup: bool = False,
    drain_on_signals: bool = False,
    workers: int = 1,
) -> web.Application:
    """The gateway app. `runtime` is a pre-loaded config (the CLI validates before binding).

    `handle_sighup` reloads on SIGHUP; `drain_on_signals` drains on SIGTERM/SIGINT
    (`proxy.server.operations.Drain`), replacing the handlers of aiohttp's runner (the CLI).
    """
    app = web.Application(client_max_size=1 << 40)  # the body limit is checked per route, from config
    gateway = GatewayState(config_path, extra_plugins, workers)
    app[STATE] = gateway
    fwd = Forwarder(gateway)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start(runtime)
        if gateway.current.config.server.cors is not None:  # off: not a call per response
            app.on_response_prepare.append(cors.response_hook(lambda: gateway.current.config.server.cors))
            gateway.cors_hooked = True
        loop = asyncio.get_running_loop()
        if handle_sighup:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
        if drain_on_signals:
            gateway.drain.install(gateway)
        yield
        if handle_sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        await gateway.close()

    async def drain(app: web.Application) -> None:
        # The listener is closed by now; a drain that a signal began waits for requests in flight.
        if gateway.drain.draining:
            await gateway.drain.finish(gateway.current.config.server.shutdown_grace)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    r = app.router
    r.add_route("*", "/healthz", healthz)
    r.add_route("*", "/readyz", operations.readyz(gateway))
    r.add_route("*", "/metrics", operations.metrics(gateway))
    for prefix in ("/v1", "/openai/v1"):
        r.add_route("*", f"{prefix}/chat/completions", fwd.model_call(CHAT))
        r.add_route("*", f"{prefix}/completions", fwd.model_call(COMPLETIONS))
        r.add_route("*", f"{prefix}/embeddings", fwd.model_call(EMBEDDINGS))
        r.add_route("*", f"{prefix}/models", fwd.list_models)
        r.add_route("*", f"{prefix}/models/{{model:.+}}", fwd.get_model)
    # Azure-style clients: the deployment in the path is the model name.
    for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS):
        r.add_route("*", f"/openai/deployments/{{deployment}}/{endpoint}", fwd.model_call(endpoint))
    r.add_route("*", "/openai/models", fwd.list_models)
    add_responses_routes(r, fwd)  # /v1/responses and its Azure-style forms
    r.add_route("*", "/v1/{tail:.*}", fwd.passthrough)
    r.add_route("*", "/{tail:.*}", fwd.not_found)
    return app
