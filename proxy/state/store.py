"""The `Store` interface and its two implementations.

Values are bytes with a TTL; keys are namespaced under `relaygate:` on Redis so one
Redis can serve other applications too. What needs atomicity beyond get/set (limit
admission) runs a Lua script on `RedisStore.redis`, or the same logic in process on
`MemoryStore`, behind the consumer's own interface.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from .resp import RespClient, RespError

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("relaygate.state")

OnError = Literal["allow", "deny"]
PREFIX = "relaygate:"


class Attachment(Protocol):
    async def close(self) -> None: ...


A = TypeVar("A", bound=Attachment)


class StateUnavailable(Exception):
    """The shared store cannot be reached; the caller applies `state.on_error`."""


class Store(ABC):
    """Bytes under string keys, each with a time to live."""

    #: True when every process pointing at the same backend sees the same data.
    shared: bool = False

    def __init__(self, on_error: OnError = "allow") -> None:
        self.on_error: OnError = on_error
        #: Outages seen so far (a metric; one per transition from up to down).
        self.outages = 0
        #: The backend failed its last call (read it; `mark_down`/`mark_up` change it). A plain
        #: attribute, not a property: the limits' hot path reads it on every request.
        self.down = False
        self._attachments: dict[str, Any] = {}

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> bool: ...

    def attachment(self, name: str, make: Callable[[Store], A]) -> A:
        """The store's companion `name` (e.g. limit counters), made on first use.

        It lives as long as the store, so it is carried over reloads with it, and is
        closed with it.
        """
        found = self._attachments.get(name)
        if found is None:
            found = self._attachments[name] = make(self)
        return found

    async def close(self) -> None:
        """Close the attachments, then release connections (the in-process store has none)."""
        attachments, self._attachments = self._attachments, {}
        for item in attachments.values():
            await item.close()

    def mark_down(self, exc: BaseException) -> None:
        """Record a failed call: logged once per outage, not once per request."""
        if not self.down:
            self.down = True
            self.outages += 1
            log.error(
                "shared state unreachable (%s); on_error=%s: %s until it is back",
                type(exc).__name__,
                self.on_error,
                "requests are served without shared limits" if self.on_error == "allow" else "requests get 503",
            )

    def mark_up(self) -> None:
        if self.down:
            self.down = False
            log.warning("shared state reachable again")


class MemoryStore(Store):
    """One process's state. Expired entries are dropped on access and by a sweep per write burst."""

    def __init__(self, on_error: OnError = "allow") -> None:
        super().__init__(on_error)
        self._data: dict[str, tuple[float, bytes]] = {}
        self._writes = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._data[key]
            return None
        return entry[1]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = time.monotonic()
        self._data[key] = (now + ttl, value)
        self._writes += 1
        if self._writes % 1024 == 0:
            self._sweep(now)

    async def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def _sweep(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._data.items() if expires <= now]:
            del self._data[key]


class RedisStore(Store):
    """Redis through redis-py's asyncio client: one connection pool per process."""

    shared = True

    def __init__(
        self, url: str, on_error: OnError = "allow", *, timeout: float = 1.0, max_connections: int = 64
    ) -> None:
        super().__init__(on_error)
        import redis.asyncio  # the dependency is imported only where a config uses Redis

        self.url = url
        # A bounded pool that queues: a burst of requests waits for a connection rather
        # than failing (redis-py's default pool raises past 100), and Redis never sees
        # thousands of connections from one process.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=5.0,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
        )
        self.redis: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
        #: The hot path's client (limit admission and settlement): one pipelined connection.
        self.fast = RespClient(url, timeout=timeout)
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError, OSError, asyncio.TimeoutError, RespError,
        )  # fmt: skip

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a failed Redis call raises (connection, timeout, protocol)."""
        return self._errors

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.redis.get(PREFIX + key)
        except self._errors as exc:
            self.mark_down(exc)
            raise StateUnavailable(str(type(exc).__name__)) from exc
        self.mark_up()
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self.redis.set(PREFIX + key, value, px=max(1, int(ttl * 1000)))
        except self._errors as exc:
            self.mark_down(exc)
            raise StateUnavailable(str(type(exc).__name__)) from exc
        self.mark_up()

    async def delete(self, key: str) -> bool:
        try:
            deleted = await self.redis.delete(PREFIX + key)
        except self._errors as exc:
            self.mark_down(exc)
            raise StateUnavailable(str(type(exc).__name__)) from exc
        self.mark_up()
        return bool(deleted)

    async def close(self) -> None:
        await super().close()
        await self.fast.close()
        await self.redis.aclose()


def open_store(redis_url: str | None, on_error: OnError) -> Store:
    """The store a config asks for (no I/O: Redis connects on first use)."""
    return RedisStore(redis_url, on_error) if redis_url else MemoryStore(on_error)
