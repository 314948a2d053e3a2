"""The pre-resolved chain: each stage's implementations called in pluggy's order, positionally."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.hookspecs import hookimpl
from proxy.plugins import make_plugin_manager
from proxy.server.chain import Chain


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []


def plugins(seen: Seen) -> list[tuple[str, object]]:
    class TargetOnly:  # takes a subset of inject_guardrails(call, target), by name
        @staticmethod
        @hookimpl
        def inject_guardrails(target: object) -> None:
            seen.calls.append(("target-only", (target,)))

    class Both:
        @staticmethod
        @hookimpl
        async def inject_guardrails(call: object, target: object) -> None:
            seen.calls.append(("both", (call, target)))

        @staticmethod
        @hookimpl
        def authenticate(call: object) -> None:
            seen.calls.append(("auth-none", (call,)))

    class Answers:
        @staticmethod
        @hookimpl
        async def authenticate(call: object) -> str:
            seen.calls.append(("auth-answer", (call,)))
            return "client"

    return [("target-only", TargetOnly()), ("answers", Answers()), ("both", Both())]


@pytest.mark.parametrize("trace", [False, True])
async def test_stages_get_their_arguments_in_order(trace: bool, caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen()
    pm = make_plugin_manager(only=[], extra=plugins(seen))
    chain = Chain(pm, trace=trace)
    call, target = object(), object()
    with caplog.at_level(logging.INFO, logger="relaygate.plugins"):
        await chain.inject_guardrails(call, target)
        assert await chain.authenticate(call) == "client"
    # pluggy's order: the last registered first; `first` stops at the first answer.
    assert seen.calls == [("both", (call, target)), ("target-only", (target,)),
                          ("auth-none", (call,)), ("auth-answer", (call,))]
    traced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hook ")]
    assert len(traced) == (4 if trace else 0)


async def test_a_stage_without_implementations_is_a_no_op() -> None:
    chain = Chain(make_plugin_manager(only=[]), trace=False)
    assert await chain.route(object()) is None
    await chain.log_request(object())
