"""Plugin discovery: pluggy plus the `relaygate.plugins` entry points.

pluggy finds plugins and orders their implementations; `proxy.server.chain.Chain` then
resolves each per-request stage once, so the request path never goes through pluggy.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError
from .upstream.provider import Provider, ProviderRef

ENTRY_POINT_GROUP = "relaygate.plugins"
TRACE_ENV = "RELAYGATE_TRACE_HOOKS"
log = logging.getLogger("relaygate.plugins")

Impl = Callable[..., Any]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the distribution each entry point came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, importlib.metadata.Distribution] = {}


def make_plugin_manager(
    *,
    block: Iterable[str] = (),
    only: Iterable[str] | None = None,
    extra: Iterable[tuple[str, object]] = (),
) -> PluginManager:
    """A fresh manager with the `relaygate.plugins` entry points loaded.

    :param block: entry-point names not to load (config `plugins.block`).
    :param only: if given, load just these entry-point names (config `plugins.only`).
    :param extra: (name, plugin) pairs registered after the entry points (tests, embedding).
    """
    pm = PluginManager()
    wanted = set(only) if only is not None else None
    for name in block:
        pm.set_blocked(name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        if wanted is not None and ep.name not in wanted:
            continue
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            pm.distributions[ep.name] = ep.dist
    for name, plugin in extra:
        pm.register(plugin, name=name)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda msg: log.info("pluggy: %s", msg.rstrip()))
    return pm


@dataclass(slots=True)
class PluginInfo:
    plugin: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    provider_types: list[str] = field(default_factory=list)


def provider_types(pm: pluggy.PluginManager) -> tuple[dict[str, ProviderRef], dict[str, str]]:
    """Collect every registered provider type (class or lazy reference), and its plugin."""
    types: dict[str, ProviderRef] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.register_providers.get_hookimpls():

        def register(kind: str, cls: ProviderRef, _plugin: str = impl.plugin_name) -> None:
            lazy = isinstance(cls, str) and ":" in cls
            if not lazy and not (isinstance(cls, type) and issubclass(cls, Provider)):
                raise ConfigError(
                    f"plugin {_plugin!r} registered {kind!r} with {cls!r}: expected a Provider class or 'module:Class'"
                )
            if kind in types:
                raise ConfigError(f"provider type {kind!r} is registered twice (by {owners[kind]!r} and {_plugin!r})")
            types[kind] = cls
            owners[kind] = _plugin

        impl.function(register)
    return types, owners


def describe(pm: PluginManager) -> list[PluginInfo]:
    """What `relaygate plugins` prints."""
    _, owners = provider_types(pm)
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        dist = pm.distributions.get(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or ())
        infos.append(
            PluginInfo(
                plugin=name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=hooks,
                provider_types=sorted(k for k, owner in owners.items() if owner == name),
            )
        )
    return infos
