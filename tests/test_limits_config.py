"""The YAML of limits, budgets, prices and resilience; `--workers` without shared state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config.load import load_config
from proxy.errors import ConfigError
from proxy.limits.admission import duration
from proxy.limits.config import BreakerSettings, Budget, Limits, Price, Retries
from proxy.limits.estimate import Periods, input_tokens, output_cap
from proxy.plugins import make_plugin_manager, provider_types
from proxy.server.app import create_app
from proxy.testing import FakeServer

FULL = """
state: {redis: 'redis://127.0.0.1:6379/0', on_error: allow}
clients:
  keys:
    - name: team-a
      key: sk-a-0123456789
      limits: {rpm: 600, tpm: 200000, concurrency: 16}
      budget: {usd: 100, period: month}
providers:
  azure-east:
    type: openai
    base_url: http://127.0.0.1:1/v1
    limits: {rpm: 1000, tpm: 2000000}
    retries: {attempts: 3, backoff: 0.25, max_backoff: 8}
    breaker: {failures: 5, cooldown: 30}
  azure-west: {type: openai, base_url: 'http://127.0.0.1:2/v1'}
routes:
  - model: gpt-4o
    limits: {rpm: 5000}
    price: {input: 2.50, output: 10.00, cached_input: 1.25}
    default_max_tokens: 1024
    strategy: weighted
    to:
      - {provider: azure-east, model: gpt-4o, weight: 3}
      - {provider: azure-west, model: gpt-4o, weight: 1}
"""


def _load(tmp_path: Path, text: str) -> object:
    types, _ = provider_types(make_plugin_manager())
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, types)


def test_the_design_example_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, FULL)
    key = config.clients[0]  # type: ignore[attr-defined]
    assert key.limits == Limits(600, 200000, 16) and key.budget == Budget(100.0, "month")
    policy = config.provider_policies["azure-east"]  # type: ignore[attr-defined]
    assert policy.limits == Limits(1000, 2000000) and policy.retries == Retries(3, 0.25, 8.0)
    assert policy.breaker == BreakerSettings(5, 30.0)
    assert "azure-west" not in config.provider_policies  # type: ignore[attr-defined]
    route = config.routes[0]  # type: ignore[attr-defined]
    assert route.limits == Limits(5000) and route.price == Price(2.5, 10.0, 1.25)
    assert route.default_max_tokens == 1024 and route.strategy == "weighted"
    assert [t.weight for t in route.targets] == [3.0, 1.0]
    assert config.has_limits  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad,where,expected", [
    ("limits: {rpm: 0}", "clients.keys[0].limits.rpm", "whole number >= 1"),
    ("limits: {rpx: 5}", "clients.keys[0].limits.rpx", "unknown key"),
    ("limits: {}", "clients.keys[0].limits", "at least one of rpm, tpm, concurrency"),
    ("budget: {usd: 0}", "clients.keys[0].budget.usd", "> 0"),
    ("budget: {usd: 5, period: year}", "clients.keys[0].budget.period", "day, week, month, total"),
])
def test_key_errors_name_the_line_and_path(tmp_path: Path, bad: str, where: str, expected: str) -> None:
    text = f"clients:\n  keys:\n    - {{name: a, key: sk-a-0123456789, {bad}}}\nproviders: {{d: {{type: demo}}}}\n" \
           "routes: [{model: '*', to: d}]\n"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert f"c.yaml:3: {where}: " in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("route,where,expected", [
    ("strategy: random", "routes[0].strategy", "fallback, weighted, least_busy"),
    ("price: {input: 1}", "routes[0].price.output", "required"),
    ("default_max_tokens: 0", "routes[0].default_max_tokens", ">= 1"),
    ("to: {provider: d, weight: 0}", "routes[0].to.weight", "> 0"),
])
def test_route_errors(tmp_path: Path, route: str, where: str, expected: str) -> None:
    to = "" if route.startswith("to:") else ", to: d"
    text = f"providers: {{d: {{type: demo}}}}\nroutes:\n  - {{model: '*'{to}, {route}}}\n"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert where in str(info.value) and expected in str(info.value)


def test_provider_policy_errors(tmp_path: Path) -> None:
    text = "providers:\n  d: {type: demo, retries: {attempts: 0}, breaker: {failures: 2, cooldwn: 3}}\nroutes: []\n"
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "providers.d.retries.attempts" in str(info.value)


def test_vendor_spellings_are_accepted(tmp_path: Path) -> None:
    text = ("clients:\n  keys:\n    - {name: a, key: sk-a-0123456789, budget: {usd: 5, period: Monthly}}\n"
            "providers: {d: {type: demo}}\nroutes: [{model: '*', to: d, strategy: Least-Busy}]\n")
    config = _load(tmp_path, text)
    assert config.clients[0].budget.period == "month"  # type: ignore[attr-defined]
    assert config.routes[0].strategy == "least_busy"  # type: ignore[attr-defined]


# ---------------------------------------------------------------- --workers


LIMITED = "clients:\n  keys:\n    - {name: a, key: sk-a-0123456789, limits: {rpm: 5}}\n" \
          "providers: {d: {type: demo}}\nroutes: [{model: '*', to: d}]\n"


def test_workers_with_limits_and_no_redis_refuse_to_start(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(LIMITED)
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", "1",
                             "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "state.redis" in result.stderr and "--workers 2" in result.stderr


def test_a_reload_that_adds_unshared_limits_under_workers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers: {d: {type: demo}}\nroutes: [{model: '*', to: d}]\n")
    server = FakeServer(lambda: create_app(path, workers=2))
    with server:
        from proxy.server.app import STATE

        assert server.app is not None
        gateway = server.app[STATE]
        path.write_text(LIMITED)
        assert server.call(gateway.reload()) is False
        assert gateway.current.config.clients is None  # the running config stays


# ---------------------------------------------------------------- small pieces


@pytest.mark.parametrize("ms,text", [(0, "0ms"), (17, "17ms"), (1000, "1s"), (8640, "8.64s"), (360000, "6m0s"),
                                     (90500, "1m30.5s"), (3723000, "1h2m3s")])
def test_openai_duration_format(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_estimates() -> None:
    assert output_cap({"max_tokens": 10, "n": 3}) == 30
    assert output_cap({"max_completion_tokens": 7, "max_tokens": 10}) == 7
    assert output_cap({"max_output_tokens": 5}) == 5 and output_cap({}) is None
    text = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert input_tokens(text, 0) == 100 + 4
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "d" * 10**6}}]}]}
    assert input_tokens(image, 10**6) == 1000 + 4, "an image costs a fixed estimate, not its bytes"
    assert input_tokens({"input": [[1, 2, 3], [4]]}, 0) == 4  # token ids


def test_budget_periods_are_utc_calendar_periods() -> None:
    periods = Periods()
    # 2025-03-31T23:30:00Z is a Monday
    now = 1743463800.0
    assert periods.current("day", now) == ("d2025-03-31", 1743465600.0)
    assert periods.current("week", now) == ("w2025-03-31", 1743465600.0 + 6 * 86400)
    assert periods.current("month", now) == ("m2025-03", 1743465600.0)
    assert periods.current("total", now) == ("total", None)
    assert periods.current("month", 1743465600.0) == ("m2025-04", 1746057600.0)
