"""`relaygate check | plugins | serve` as an operator runs them, and `${VAR}` interpolation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest
from core_helpers import raw, wait_healthy
from fakes.openai_upstream import FakeOpenAI, free_port

import proxy
from proxy.cli import main
from proxy.testing import Gateway

GOOD = """\
server:
  port: 8080
providers:
  demo: {type: demo}
routes:
  - model: "*"
    to: demo
"""


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------ check


def test_check_good_file_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and str(path) in result.stdout


def test_check_console_script_is_the_same_program(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("relaygate")
    if not script.exists():
        pytest.fail(f"the relaygate console script is not installed next to {sys.executable}")
    bad = write(tmp_path, "providers: [1]\n")
    assert subprocess.run([str(script), "check", str(write(tmp_path, GOOD, "g.yaml"))],
                          capture_output=True, check=False).returncode == 0
    assert subprocess.run([str(script), "check", str(bad)], capture_output=True, check=False).returncode == 1


BAD_CASES = {
    "unknown-provider-type": ("""\
        providers:
          demo: {type: demo}
          bad:
            type: no-such-type
        routes:
          - {model: "*", to: demo}
        """, 4, "providers.bad.type", "no-such-type"),
    "route-to-unknown-provider": ("""\
        providers:
          demo: {type: demo}
        routes:
          - model: "*"
            to:
              - {provider: nowhere}
        """, 6, "routes[0].to[0].provider", "nowhere"),
    "unknown-key": ("""\
        server:
          host: 127.0.0.1
          prot: 8080
        providers:
          demo: {type: demo}
        """, 3, "server.prot", "unknown key"),
    "wrong-type": ("""\
        server:
          port: eighty
        """, 2, "server.port", "whole number"),
    "bad-url": ("""\
        providers:
          up:
            type: openai
            base_url: ftp://example.com
        """, 4, "providers.up.base_url", "URL"),
    "invalid-yaml": ("""\
        providers:
          demo: {type: demo
        routes: []
        """, 3, "", "invalid YAML"),
    "missing-variable": ("""\
        providers:
          up:
            type: openai
            api_key: ${RELAYGATE_TEST_SURELY_UNSET}
        """, 4, "providers.up.api_key", "RELAYGATE_TEST_SURELY_UNSET"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_check_bad_file_exits_1_naming_file_line_and_key(case: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    text, line, key_path, words = BAD_CASES[case]
    path = write(tmp_path, text)
    os.environ.pop("RELAYGATE_TEST_SURELY_UNSET", None)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{line}: {key_path}".rstrip() in err, err
    assert words in err, err


def test_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          port: x
        providers:
          a: {type: nope}
        routes:
          - {model: m, to: b}
        """)
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert f"{path}:2: server.port" in result.stderr
    assert f"{path}:4: providers.a.type" in result.stderr
    assert "routes[0]" in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = run_cli("check", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1 and "absent.yaml" in result.stderr


def test_missing_variable_is_never_an_empty_string(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        clients:
          keys:
            - {name: a, key: "${RELAYGATE_TEST_KEY_UNSET}"}
        providers:
          demo: {type: demo}
        """)
    os.environ.pop("RELAYGATE_TEST_KEY_UNSET", None)
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert "RELAYGATE_TEST_KEY_UNSET" in result.stderr and f"{path}:3:" in result.stderr


# ------------------------------------------------------------------ interpolation, end to end


def test_interpolation_and_defaults(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    config = """\
        clients:
          keys:
            - {name: team, key: "${RG_TEST_CLIENT_KEY}"}
        providers:
          up:
            type: openai
            base_url: "${RG_TEST_UPSTREAM_URL:-http://127.0.0.1:9/v1}"
            api_key: "${UPSTREAM_KEY}"
            read_timeout: "${RG_TEST_TIMEOUT:-30}"
        routes:
          - {model: "${RG_TEST_MODEL:-gpt-4o}", to: up}
        """
    gw = make_gateway(textwrap.dedent(config),
                      env={"RG_TEST_CLIENT_KEY": "sk-from-env", "RG_TEST_UPSTREAM_URL": f"{upstream.url}/v1"})
    with openai.OpenAI(base_url=gw.base_url, api_key="sk-from-env", max_retries=0) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.content == "Echo: x"
    assert upstream.requests, "the base_url came from the environment"


def test_default_applies_when_unset(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          port: ${RG_TEST_PORT_UNSET:-9123}
        providers:
          demo: {type: demo}
        """)
    os.environ.pop("RG_TEST_PORT_UNSET", None)
    from proxy.server.runtime import load_runtime

    assert load_runtime(path).config.server.port == 9123


# ------------------------------------------------------------------ plugins


def test_plugins_json() -> None:
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    plugins = {p["plugin"]: p for p in orjson.loads(result.stdout)}
    for entry in plugins.values():
        assert set(entry) == {"plugin", "distribution", "version", "hooks", "provider_types"}
    for name, hook in (("auth", "authenticate"), ("routing", "route"), ("accesslog", "log_request"),
                       ("openai", "register_providers"), ("demo", "register_providers")):
        assert plugins[name]["distribution"] == "relaygate"
        assert plugins[name]["version"] == proxy.__version__
        assert hook in plugins[name]["hooks"]
    assert plugins["openai"]["provider_types"] == ["openai"]
    assert plugins["demo"]["provider_types"] == ["demo"]
    assert plugins["auth"]["provider_types"] == []


# ------------------------------------------------------------------ serve


def test_open_gateway_refuses_non_loopback_host(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = run_cli("serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(free_port()), timeout=20)
    assert result.returncode == 1
    assert "0.0.0.0" in result.stderr and "clients" in result.stderr


def test_open_gateway_refuses_non_loopback_host_from_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port: 8080", f"host: 0.0.0.0\n  port: {free_port()}"))
    assert run_cli("serve", "--config", str(path), timeout=20).returncode == 1


def test_gateway_with_clients_may_bind_everywhere(tmp_path: Path) -> None:
    """The refusal is about open gateways only: with client keys, 0.0.0.0 serves."""
    port = free_port()
    path = write(tmp_path, GOOD + "clients:\n  keys:\n    - {name: a, key: sk-cli-test}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path), "--host", "0.0.0.0",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert raw("GET", f"http://127.0.0.1:{port}/v1/models", key="sk-cli-test").status == 200
        assert raw("GET", f"http://127.0.0.1:{port}/v1/models", key=None).status == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=10)

