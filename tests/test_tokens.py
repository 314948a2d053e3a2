"""proxy.tokens.RefreshingToken: single-flight, refresh early, back off after failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from proxy.errors import UpstreamUnavailable
from proxy.upstream.tokens import RefreshingToken, Token, TokenFetchError


class Counting(RefreshingToken):
    what = "a test token"

    def __init__(self, lifetime: float, margin: float = 0.0, **kw: object) -> None:
        super().__init__(provider="p", margin=margin, **kw)  # type: ignore[arg-type]
        self.lifetime = lifetime
        self.fail = False
        self.threads: set[int] = set()

    def _fetch(self) -> Token:
        self.threads.add(threading.get_ident())
        time.sleep(0.05)  # blocking, like a subprocess or google-auth
        if self.fail:
            raise TokenFetchError("source down")
        return Token(f"tok-{self.fetches}", time.time() + self.lifetime)


async def test_concurrent_callers_share_one_fetch_off_the_loop() -> None:
    tokens = Counting(lifetime=60)
    values = await asyncio.gather(*(tokens.token() for _ in range(50)))
    assert set(values) == {"tok-1"} and tokens.fetches == 1
    assert threading.get_ident() not in tokens.threads


async def test_refetched_inside_the_margin() -> None:
    tokens = Counting(lifetime=60, margin=120)  # always inside the margin
    assert await tokens.token() == "tok-1"
    assert await tokens.token() == "tok-2"


async def test_refresh_after_refusal_and_static_tokens() -> None:
    tokens = Counting(lifetime=60)
    await tokens.token()
    assert await tokens.refresh() is True and await tokens.token() == "tok-2"
    static = Counting(lifetime=60, static=Token("fixed", None))
    assert await static.token() == "fixed" and await static.refresh() is False and static.fetches == 0


async def test_failure_keeps_a_valid_token_then_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    tokens = Counting(lifetime=60, margin=120)
    assert await tokens.token() == "tok-1"
    tokens.fail = True
    assert await tokens.token() == "tok-1"  # still valid: used, with a warning
    assert await tokens.token() == "tok-1"  # inside the back-off: no second attempt
    assert tokens.fetches == 2
    assert "source down" in caplog.text and "tok-" not in caplog.text


async def test_no_token_at_all_fails_fast_during_back_off() -> None:
    tokens = Counting(lifetime=60)
    tokens.fail = True
    with pytest.raises(UpstreamUnavailable) as info:
        await tokens.token()
    assert info.value.code == "upstream_auth_unavailable"
    with pytest.raises(UpstreamUnavailable):
        await tokens.token()
    assert tokens.fetches == 1
