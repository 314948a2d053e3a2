"""An upstream that is not aiohttp: the standard library's HTTP/1.0 server.

Independent OpenAI-compatible servers differ in framing: this one answers HTTP/1.0, keeps
no connection alive, and ends its SSE stream by closing the connection (no length, no
chunking). The gateway must relay it all the same, to the official SDK.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, UPSTREAM_KEY, access_records, config_yaml
from openapi_check import validate

from proxy.testing import Gateway

COMPLETION = {
    "id": "chatcmpl-stdlib", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the stdlib", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
}


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    body = {"id": "chatcmpl-stdlib", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            "usage": usage}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.seen.append((self.path, dict(self.headers), body))
        if self.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            self._json(401, {"error": {"message": "bad key", "type": "invalid_request_error", "param": None,
                                       "code": "invalid_api_key"}})
            return
        request = orjson.loads(body)
        if not request.get("stream"):
            self._json(200, COMPLETION)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # no length, no chunking: the stream ends when the connection does
        for word in ("from ", "the ", "stdlib"):
            self.wfile.write(_chunk({"content": word}))
            self.wfile.flush()
        self.wfile.write(_chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(_chunk({}, usage=COMPLETION["usage"], choices=False))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        # Linger before closing: the SDK hangs up on [DONE], so the gateway's end of the
        # body comes after its client has gone, which must not turn into an error.
        time.sleep(0.1)

    def _json(self, status: int, payload: dict) -> None:
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stdlib_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gw(stdlib_upstream: str, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(config_yaml(stdlib_upstream))


def test_json_answers_over_http_1_0(gw: Gateway) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        for _ in range(3):  # no keep-alive upstream: each call opens its own connection
            resp = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
            validate("CreateChatCompletionResponse", orjson.loads(resp.content))
            assert resp.parse().choices[0].message.content == "from the stdlib"
    assert [r["tokens_in"] for r in access_records(gw, 3)] == [4, 4, 4]
    path, headers, _ = Handler.seen[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_the_upstream_ends_by_closing(include_usage: bool, gw: Gateway) -> None:
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client:
        chunks = list(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the stdlib"
    assert (chunks[-1].usage is not None) is include_usage
    record = access_records(gw, 1)[-1]
    assert (record["status"], record["tokens_in"], record["tokens_out"], record["error"]) == (200, 4, 3, None)


def test_an_error_from_http_1_0(stdlib_upstream: str, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(stdlib_upstream), env={"UPSTREAM_KEY": "wrong"})
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "upstream_auth_failed"
