"""Shared state: what must hold across workers and replicas.

Limits, budgets and stored responses live in a `Store`: Redis when `state.redis` is set
(shared by every process that points at it), else an in-process store with the same
interface (one process only). The store is created with the first runtime and carried
over on reload while `state.redis` is unchanged, so a SIGHUP never resets a window, a
budget or a stored response.
"""

from .store import MemoryStore, RedisStore, StateUnavailable, Store, open_store

__all__ = ["MemoryStore", "RedisStore", "StateUnavailable", "Store", "open_store"]
