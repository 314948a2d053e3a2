"""The per-request stages, resolved once per runtime: one typed attribute per stage.

pluggy cannot await async implementations, and its per-call dispatch costs more than
the stages themselves, so at startup and on every reload each stage of
`proxy.hookspecs.STAGES` is resolved into a plain tuple of callables in pluggy's call
order. Whether a stage stops at the first non-None result is read from its hookspec
(`firstresult=True`), where a reader of the contract finds it.

A reader can go from the journey (`chain.authenticate(call)`) to the spec of the same
name in `proxy.hookspecs`, and from there to every implementation.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

from ..errors import ConfigError
from ..hookspecs import STAGES
from ..plugins import TRACE_ENV

if TYPE_CHECKING:
    from ..types import Call, Client, Target

log = logging.getLogger("relaygate.plugins")

Impl = Callable[..., Any]
Bound = tuple[tuple[bool, Impl], ...]  # (is_async, callable), in call order


def _bind(impl: pluggy.HookImpl, spec_args: tuple[str, ...], trace: bool) -> Impl:
    """A callable taking the stage's arguments positionally, in the hookspec's order.

    pluggy lets an implementation take any subset of the spec's arguments; when it takes
    them all in order (the common case) the function itself is the callable, so a stage
    costs one plain call per request.
    """
    fn = impl.function
    argnames = tuple(impl.argnames)
    if impl.hookwrapper or impl.wrapper:
        raise ConfigError(f"plugin {impl.plugin_name!r}: hook wrappers are not supported by relaygate's stages")
    if argnames == spec_args:
        call: Impl = fn
    else:
        picks = tuple(spec_args.index(a) for a in argnames)

        def call(*args: Any) -> Any:
            return fn(*[args[i] for i in picks])

    if not trace:
        return call

    async def traced(*args: Any) -> Any:
        t0 = time.perf_counter()
        result = call(*args)
        if inspect.isawaitable(result):
            result = await result
        log.info(
            "hook %s.%s -> %s (%.3f ms)",
            impl.plugin_name,
            fn.__name__,
            type(result).__name__,
            (time.perf_counter() - t0) * 1e3,
        )
        return result

    return traced


def _first(impls: Bound) -> Callable[..., Awaitable[Any]]:
    async def run(*args: Any) -> Any:
        for is_async, fn in impls:
            result = await fn(*args) if is_async else fn(*args)
            if result is not None:
                return result
        return None

    return run


def _each(impls: Bound) -> Callable[..., Awaitable[None]]:
    async def run(*args: Any) -> None:
        for is_async, fn in impls:
            if is_async:
                await fn(*args)
            else:
                fn(*args)

    return run


class Chain:
    """Each per-request stage as an awaitable of the hookspec's signature."""

    authenticate: Callable[[Call], Awaitable[Client | None]]
    route: Callable[[Call], Awaitable[list[Target] | None]]
    rewrite_request: Callable[[Call], Awaitable[None]]
    inject_guardrails: Callable[[Call, Target], Awaitable[None]]
    log_request: Callable[[Call], Awaitable[None]]

    def __init__(self, pm: pluggy.PluginManager, *, trace: bool | None = None) -> None:
        trace = bool(os.environ.get(TRACE_ENV)) if trace is None else trace
        #: Implementations per stage, in call order (for `relaygate plugins` and benches).
        self.stages: dict[str, Bound] = {}
        for stage in STAGES:
            caller = getattr(pm.hook, stage)
            spec = caller.spec
            spec_args = tuple(spec.argnames)
            bound = tuple(
                (trace or inspect.iscoroutinefunction(impl.function), _bind(impl, spec_args, trace))
                for impl in reversed(caller.get_hookimpls())  # pluggy's own call order
            )
            self.stages[stage] = bound
            setattr(self, stage, _first(bound) if spec.opts.get("firstresult") else _each(bound))
