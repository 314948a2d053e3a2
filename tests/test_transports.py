"""The same behaviour on both transports under the seam (`transport: lean | aiohttp`)."""

from __future__ import annotations

import concurrent.futures
import gzip
import socket
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from core_helpers import CLIENT_KEY, ENV, config_yaml, post_json, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI
from fakes.raw_upstream import CHAT_BODY, RawUpstream, answer, json_response

from proxy.errors import ConfigError
from proxy.server.runtime import load_runtime
from proxy.testing import Gateway

TRANSPORTS = ["lean", "aiohttp"]


def _config(url: str, transport: str, extra: str = "") -> str:
    provider = (
        f"  up:\n    type: openai\n    base_url: {url}/v1\n    api_key: \"${{UPSTREAM_KEY}}\"\n"
        f"    transport: {transport}\n    read_timeout: 2\n    connect_timeout: 2\n{extra}"
    )
    text = config_yaml(url)
    return text.replace(f"  up: {{type: openai, base_url: {url}/v1, api_key: \"${{UPSTREAM_KEY}}\"}}\n", provider)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_chat_stream_and_errors(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], transport: str) -> None:
    gw = make_gateway(_config(upstream.url, transport))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
        chunks = list(client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        ))
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        upstream.on("limited", Behaviour(status=429, retry_after="3"))
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}])
        assert info.value.response.headers["retry-after"] == "3"
    assert gw.wait_access_log(3)[-1]["status"] == 429
    assert upstream.requests[0].headers["Authorization"] == "Bearer " + upstream.api_key


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_passthrough_download(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], transport: str) -> None:
    gw = make_gateway(_config(upstream.url, transport))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
        assert speech.content.startswith(b"ID3")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_timeout_is_a_504(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], transport: str) -> None:
    upstream.on("slow", Behaviour(delay=5))
    gw = make_gateway(_config(upstream.url, transport))
    started = time.monotonic()
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    resp = post_json(f"{gw.base_url}/chat/completions", body)
    assert resp.status == 504
    assert time.monotonic() - started < 4.5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_port_is_a_503(make_gateway: Callable[..., Gateway], transport: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    gw = make_gateway(_config(url, transport))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 503
    assert resp.json["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_caps_hold_on_both(make_gateway: Callable[..., Gateway], transport: str) -> None:
    big = json_response(b'{"pad":"' + b"x" * 5000 + b'"}')
    heads = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"Content-Length: 2\r\n\r\n{}"
    gzip_body = json_response(gzip.compress(CHAT_BODY), extra=b"Content-Encoding: gzip\r\n")
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
    with RawUpstream(answer(big, heads, gzip_body, redirect)) as up:
        gw = make_gateway(_config(up.url, transport, "    max_response_size: 4KiB\n"))
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        url = f"{gw.base_url}/chat/completions"
        assert post_json(url, body).status == 502  # over max_response_size
        assert post_json(url, body).status == 502  # 200 headers
        decoded = post_json(url, body)
        assert decoded.status == 200 and decoded.json["usage"]["total_tokens"] == 4
        assert post_json(url, body).status == 502  # a redirect is not followed
    assert raw("GET", f"{gw.url}/healthz", key=None).status == 200


def test_transport_and_tls_keys_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "c.yaml"
    for extra, message in [
        ("", r"providers\.up\.transport: expected one of lean, aiohttp.*got 'http2'"),
        ("    tls: {client_key: k.pem}\n", r"tls\.client_key: client_key needs client_cert"),
        ("    tls: {ca_file: a.pem, verify: false}\n", r"tls\.ca_file: ca_file has no use with verify: false"),
        ("    tls: {cafile: a.pem}\n", r"tls\.cafile: unknown key"),
    ]:
        transport = "http2" if not extra else "lean"
        path.write_text(_config("http://127.0.0.1:9", transport, extra))
        with pytest.raises(ConfigError, match=message):
            load_runtime(path)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pool_timeout_on_both(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway], transport: str) -> None:
    upstream.on("slow", Behaviour(delay=1.5))
    gw = make_gateway(_config(upstream.url, transport, "    max_connections: 1\n    pool_timeout: 0.3\n"))
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    url = f"{gw.base_url}/chat/completions"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_json, url, body)
        deadline = time.monotonic() + 5
        while not upstream.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        second = post_json(url, {**body, "model": "fast"})
        assert first.result().status == 200
    assert second.status == 503
    assert second.json["error"]["code"] == "upstream_pool_timeout"
