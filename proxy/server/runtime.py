"""One loaded configuration: plugins, chain, config and started providers.

A request takes the current `Runtime` once and keeps it to the end, so a reload never
changes the rules under a request in flight. The old runtime closes its providers when
its last request has left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from ..config.load import Config, Document, Route, load_config, plugin_selection
from ..limits.admission import Limiter
from ..plugins import make_plugin_manager, provider_types
from ..state import MemoryStore, Store, open_store
from ..types import Client, ModelInfo
from .chain import Chain
from .resilience import Health

if TYPE_CHECKING:
    from ..telemetry.metrics import Metrics
    from ..telemetry.tracing import Tracing

log = logging.getLogger("relaygate")


def load_runtime(path: str | Path, extra_plugins: Iterable[tuple[str, object]] = ()) -> Runtime:
    """Load plugins and config (blocking file and entry-point I/O; no network).

    The file is read once: its `plugins:` block picks the plugins, whose provider types
    then validate the same document's `providers:`.
    """
    doc = Document.read(path)
    block, only = plugin_selection(doc)
    pm = make_plugin_manager(block=block, only=only, extra=extra_plugins)
    types, _ = provider_types(pm)
    config = load_config(doc, types)
    return Runtime(config=config, pm=pm, chain=Chain(pm))


@dataclass(eq=False)
class Runtime:
    config: Config
    pm: pluggy.PluginManager
    chain: Chain
    inflight: int = 0
    retired: bool = False
    #: Shared state (limits, budgets, stored responses); set by `start`.
    state: Store = field(default_factory=MemoryStore)
    #: Whether `close` closes `state` (false while a runtime that carried it over lives on).
    owns_state: bool = True
    #: The config's limits over `state`'s counters (None: no limit configured); set by `start`.
    limiter: Limiter | None = None
    #: Each provider's breaker and requests in flight (per process; carried over reloads).
    health: Health = field(init=False)
    #: Set by the app's `Telemetry` from `telemetry:`; None when off (nothing is counted or traced).
    metrics: Metrics | None = None
    tracing: Tracing | None = None
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.health = Health(self.config)

    def breaker_open(self, provider: str) -> bool:
        """Whether `provider`'s circuit breaker is open or half-open (the breaker gauge reads this)."""
        return self.health.breaker_open(provider)

    # -------------------------------------------------------------- lifecycle

    async def start(self, previous: Runtime | None = None) -> None:
        """Start providers; take over `previous`'s store while `state.redis` is unchanged.

        Ownership of a carried-over store moves only in `took_over`, once this runtime
        serves: a reload that fails to start leaves the running one as it was.
        """
        settings = self.config.state
        if previous is not None and previous.config.state.redis == settings.redis:
            self.state = previous.state
            self.owns_state = False
        else:
            self.state = open_store(settings.redis, settings.on_error)  # type: ignore[arg-type]
            self.owns_state = True
        if previous is not None:
            self.health = Health(self.config, previous.health)
        self.limiter = Limiter(self.config, self.state) if self.config.has_limits else None
        started = []
        try:
            for provider in self.config.providers.values():
                started.append(provider)  # close() even a half-started provider
                await provider.start()
        except BaseException:
            for provider in reversed(started):
                await provider.close()
            if self.owns_state:
                await self.state.close()
            raise

    def took_over(self, previous: Runtime) -> None:
        """This runtime now serves in place of `previous`: a shared store is ours to close."""
        if self.state is previous.state:
            self.state.on_error = self.config.state.on_error  # type: ignore[assignment]
            previous.owns_state = False
            self.owns_state = True

    async def close(self) -> None:
        for provider in self.config.providers.values():
            try:
                await provider.close()
            except Exception:  # one provider's failure must not leak the others' pools
                log.exception("closing provider %s failed", provider.name)
        if self.owns_state:
            await self.state.close()

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self._drained.set()

    async def retire(self, grace: float | None = None) -> None:
        """Close once the requests that began on this runtime have finished."""
        self.retired = True
        if self.inflight:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), grace)
            except TimeoutError:
                log.warning("closing the previous config with %d requests still in flight", self.inflight)
        await self.close()

    # -------------------------------------------------------------- models

    def first_route(self, model: str) -> Route | None:
        for rule in self.config.routes:
            if fnmatchcase(model, rule.model):
                return rule
        return None

    async def models_for(self, client: Client) -> list[ModelInfo]:
        """What `client` may call: literal routes, plus upstream listings under glob routes."""
        providers = self.config.providers
        listings: dict[str, list[ModelInfo] | None] = {}
        wanted = {spec.provider for rule in self.config.routes if rule.is_glob for spec in rule.targets}
        names = sorted(wanted)
        results = await asyncio.gather(*(providers[n].list_models() for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=False):
            if isinstance(result, BaseException):
                log.warning("provider %s: model listing failed: %s", name, type(result).__name__)
                result = None
            listings[name] = result

        out: dict[str, ModelInfo] = {}
        for rule in self.config.routes:
            if not rule.is_glob:
                if rule.model not in out and client.allows(rule.model):
                    out[rule.model] = ModelInfo(rule.model, rule.targets[0].provider)
                continue
            for spec in rule.targets:
                for info in listings.get(spec.provider) or ():
                    alias = _client_name(spec.model, info.id)
                    if (
                        alias is not None
                        and alias not in out
                        and client.allows(alias)
                        and self.first_route(alias) is rule
                    ):
                        out[alias] = ModelInfo(alias, info.owned_by, info.created)
        return list(out.values())

    async def find_model(self, client: Client, model: str) -> ModelInfo | None:
        rule = self.first_route(model)
        if rule is None:
            return None
        if not rule.is_glob:
            return ModelInfo(model, rule.targets[0].provider)
        for spec in rule.targets:
            listing = await self.config.providers[spec.provider].list_models()
            if listing is None:  # cannot list: the rule's glob is all we know
                return ModelInfo(model, spec.provider)
            for info in listing:
                if _client_name(spec.model, info.id) == model:
                    return ModelInfo(model, info.owned_by, info.created)
        return None


def _client_name(template: str | None, upstream_id: str) -> str | None:
    """Invert a target's model template: which client name yields `upstream_id`?"""
    if template is None:
        return upstream_id
    if "{model}" not in template:
        return None
    prefix, _, suffix = template.partition("{model}")
    if upstream_id.startswith(prefix) and upstream_id.endswith(suffix) and len(upstream_id) > len(prefix) + len(suffix):
        return upstream_id[len(prefix) : len(upstream_id) - len(suffix)]
    return None
