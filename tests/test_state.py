"""Shared state: the in-process and Redis stores, config, and carry-over on reload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy.state import MemoryStore, RedisStore, StateUnavailable, Store
from proxy.testing import Gateway, RedisServer


async def _round_trip(store: Store) -> None:
    assert await store.get("k") is None
    await store.set("k", b"v", ttl=60)
    assert await store.get("k") == b"v"
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    await store.set("short", b"x", ttl=0.05)
    await asyncio.sleep(0.12)
    assert await store.get("short") is None


async def test_memory_store_round_trip_and_expiry() -> None:
    await _round_trip(MemoryStore())


async def test_redis_store_round_trip_and_expiry(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    try:
        await _round_trip(store)
        await store.set("seen-by-another", b"1", ttl=60)
        other = RedisStore(redis_server.url)
        try:
            assert await other.get("seen-by-another") == b"1"  # shared across processes' pools
        finally:
            await other.close()
    finally:
        await store.close()


async def test_redis_outage_is_reported_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as server:
        store = RedisStore(server.url, "deny", timeout=0.5)
        try:
            await store.set("a", b"1", ttl=60)
            server.stop()
            for _ in range(3):
                with pytest.raises(StateUnavailable):
                    await store.get("a")
            assert store.down and store.outages == 1
            assert sum("shared state unreachable" in r.getMessage() for r in caplog.records) == 1
            server.start()
            assert await store.get("a") is None  # a fresh server, empty; the client reconnected alone
            assert not store.down
        finally:
            await store.close()


def _config(state: str) -> str:
    return f"""
{state}
providers:
  demo: {{type: demo}}
routes:
  - model: "*"
    to: demo
"""


def test_state_config_accepts_vendor_case_and_refuses_bad_urls(tmp_path: object) -> None:
    from proxy.config.load import load_config
    from proxy.errors import ConfigError
    from proxy.plugins import make_plugin_manager, provider_types

    types, _ = provider_types(make_plugin_manager())

    def load(text: str) -> object:
        path = tmp_path / "c.yaml"  # type: ignore[operator]
        path.write_text(text)
        return load_config(path, types)

    config = load(_config("state: {redis: 'redis://127.0.0.1:6379/0', on_error: DENY}"))
    assert config.state.redis == "redis://127.0.0.1:6379/0" and config.state.on_error == "deny"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"state\.redis: expected a Redis URL"):
        load(_config("state: {redis: 'http://127.0.0.1:6379'}"))
    with pytest.raises(ConfigError, match=r"state\.on_error: expected allow or deny"):
        load(_config("state: {on_error: maybe}"))


def test_reload_keeps_the_store_while_the_url_is_unchanged(redis_server: RedisServer) -> None:
    with Gateway(_config("")) as gw:
        first = gw.runtime.state
        assert isinstance(first, MemoryStore)
        assert gw.reload()
        assert gw.runtime.state is first  # in-process counters survive a SIGHUP
        assert gw.reload(_config(f"state: {{redis: '{redis_server.url}'}}"))
        redis_store = gw.runtime.state
        assert isinstance(redis_store, RedisStore)
        assert gw.reload(_config(f"state: {{redis: '{redis_server.url}', on_error: deny}}"))
        assert gw.runtime.state is redis_store and redis_store.on_error == "deny"
        assert gw.runtime.owns_state


def test_a_reload_that_fails_leaves_the_store_with_the_running_config(
    redis_server: RedisServer, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(_config(f"state: {{redis: '{redis_server.url}'}}"))
    store = gw.runtime.state
    assert not gw.reload(_config(f"state: {{redis: '{redis_server.url}'}}\nbogus: 1"))
    assert gw.runtime.state is store and gw.runtime.owns_state
