"""Streams that end badly: the client leaving, the upstream dying after the first bytes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, access_records, config_yaml, post_json, sse_data
from fakes.openai_upstream import Behaviour, FakeOpenAI
from openapi_check import validate, validate_error

from proxy.testing import Gateway

CHAT = [{"role": "user", "content": "tell me a long story"}]
LONG = Behaviour(chunk_delay=0.05, words=400)  # ~20 s if nobody stops it


def test_client_disconnect_closes_upstream_sync(client: openai.OpenAI, gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", LONG)
    stream = client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    next(chunks)
    stream.close()
    assert upstream.disconnected.wait(3), "the upstream stream kept running after the client left"
    assert upstream.disconnects == ["gpt-4o"] and upstream.completed == []
    record = access_records(gw, 1)[-1]
    assert record["error"] == "client_disconnected" and record["stream"] is True


async def test_client_disconnect_closes_upstream_async(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", LONG)
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        async for _chunk in stream:
            break
        await stream.close()
    # The fake's flag is a threading.Event (it lives on another loop): wait off this loop.
    assert await asyncio.to_thread(upstream.disconnected.wait, 3)
    assert upstream.disconnects == ["gpt-4o"]


def test_raw_socket_reset_mid_stream(gw: Gateway, upstream: FakeOpenAI) -> None:
    """A client that vanishes without a goodbye (RST) is noticed as well."""
    upstream.on("gpt-4o", LONG)
    body = orjson.dumps({"model": "gpt-4o", "messages": CHAT, "stream": True})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert b"200" in sock.recv(4096).split(b"\r\n", 1)[0]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert upstream.disconnected.wait(3)


def test_upstream_dying_mid_stream_ends_with_one_error_event(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(fail_after_chunks=3))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT, "stream": True})
    assert resp.status == 200  # the headers were already sent when it failed
    events = [e for e in resp.body.replace(b"\r\n", b"\n").split(b"\n\n") if e]
    assert b"data: [DONE]" not in events
    errors = [e for e in events if e.startswith(b"event: error")]
    assert len(errors) == 1 and events[-1] == errors[0], events
    data = sse_data(errors[0])
    validate_error(orjson.loads(data[0]))
    for ev in events[:-1]:
        validate("CreateChatCompletionStreamResponse", orjson.loads(sse_data(ev)[0]))
    assert len(events) == 4  # three chunks made it, then the error
    record = access_records(gw, 1)[-1]
    assert record["error"] and record["stream"] is True


def test_upstream_dying_mid_stream_sdk_raises(client: openai.OpenAI, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(fail_after_chunks=2))
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True):
            received.append(chunk)
    assert len(received) == 2
    assert info.value.message


def test_mid_stream_read_timeout_ends_with_error_event(upstream: FakeOpenAI,
                                                      make_gateway: Callable[..., Gateway]) -> None:
    """An upstream that goes silent mid-stream for longer than read_timeout: error event, not a hang."""
    slow = make_gateway(config_yaml(upstream.url, extra_providers=(
        f"  slow: {{type: openai, base_url: \"{upstream.url}/v1\", api_key: \"${{UPSTREAM_KEY}}\", "
        "read_timeout: 0.3}\n"), routes="  - {model: \"*\", to: slow}\n"))
    upstream.on("gpt-4o", Behaviour(chunk_delay=1.0, words=2))
    started = time.monotonic()
    resp = post_json(f"{slow.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT, "stream": True})
    assert time.monotonic() - started < 3
    if resp.status == 200:
        events = [e for e in resp.body.split(b"\n\n") if e]
        assert events[-1].startswith(b"event: error") and b"data: [DONE]" not in events
        validate_error(orjson.loads(sse_data(events[-1])[0]))
    else:  # timed out before the first chunk: a plain 504
        assert resp.status in (408, 504)
        validate_error(resp.json)


def test_client_giving_up_before_headers_cancels_upstream(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(delay=10))
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=0.5) as impatient, \
            pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert upstream.disconnected.wait(3), "the gateway kept waiting on the upstream for nobody"
    assert upstream.disconnects == ["gpt-4o"]


def test_clients_giving_up_never_use_up_the_connection_pool(upstream: FakeOpenAI,
                                                            make_gateway: Callable[..., Gateway]) -> None:
    """Each abandoned call must give its upstream connection back, or a small pool runs dry."""
    one = f"  one: {{type: openai, base_url: {upstream.url}/v1, api_key: \"${{UPSTREAM_KEY}}\", max_connections: 1}}\n"
    gw = make_gateway(config_yaml(upstream.url, extra_providers=one, routes="  - {model: \"*\", to: one}\n"))
    upstream.on("slow", Behaviour(delay=10))
    for _ in range(3):
        with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=0.3) as impatient, \
                pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="slow", messages=CHAT)
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=5) as patient:
        out = patient.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert out.choices[0].message.content


def test_stream_dying_before_first_chunk_is_a_plain_error(gw: Gateway, upstream: FakeOpenAI) -> None:
    """Nothing reached the client yet: a JSON error with a real status, not a 200 and an error event."""
    upstream.on("gpt-4o", Behaviour(fail_after_chunks=0))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT, "stream": True})
    assert resp.status >= 500 and resp.header("content-type").startswith("application/json")
    validate_error(resp.json)


def test_stream_dying_before_first_chunk_falls_back(upstream: FakeOpenAI,
                                                    make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, routes=(
        "  - {model: fb, to: [{provider: up, model: broken}, {provider: up, model: gpt-4o}]}\n")))
    upstream.on("broken", Behaviour(fail_after_chunks=0))
    resp = post_json(f"{gw.base_url}/chat/completions", {"model": "fb", "messages": CHAT, "stream": True})
    assert resp.status == 200
    assert sse_data(resp.body)[-1] == b"[DONE]"
    record = access_records(gw, 1)[-1]
    assert record["upstream_model"] == "gpt-4o" and len(record["fallbacks"]) == 1


@pytest.mark.parametrize("shape", [Behaviour(split_writes=True), Behaviour(crlf=True),
                                   Behaviour(split_writes=True, crlf=True)], ids=["split", "crlf", "split-crlf"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_awkward_upstream_framing(shape: Behaviour, include_usage: bool, client: openai.OpenAI, gw: Gateway,
                                  upstream: FakeOpenAI) -> None:
    """Events split across reads, CRLF line ends: the client still gets whole events, usage is still counted."""
    upstream.on("gpt-4o", shape)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a b c"}],
                                                 stream=True, **extra))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: a b c"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == (1 if include_usage else 0)
    record = access_records(gw, 1)[-1]
    assert (record["tokens_in"], record["tokens_out"]) == (3, 4)


_CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
_USAGE_EV = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
_BOTH = b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'


@pytest.mark.parametrize(("block", "keep", "expected"), [
    (_CONTENT * 3 + _USAGE_EV + b"data: [DONE]\n\n", False, _CONTENT * 3 + b"data: [DONE]\n\n"),
    (_CONTENT * 3 + _USAGE_EV + b"data: [DONE]\n\n", True, _CONTENT * 3 + _USAGE_EV + b"data: [DONE]\n\n"),
    (_USAGE_EV, False, b""),
    (_CONTENT + _BOTH, False,
     _CONTENT + b'data: {"choices":[{"index":0,"delta":{}}],"usage":null}\n\n'),
    ((_CONTENT + _USAGE_EV).replace(b"\n", b"\r\n"), False, _CONTENT),
    (_CONTENT + b'data: ["usage":{ not json\n\n', False, _CONTENT + b'data: ["usage":{ not json\n\n'),
    (_CONTENT + b'data: [{"usage":{"prompt_tokens":1}}]\n\n', False,
     _CONTENT + b'data: [{"usage":{"prompt_tokens":1}}]\n\n'),
])
def test_usage_event_cut_out_of_a_block(block: bytes, keep: bool, expected: bytes) -> None:
    """Only the event carrying usage is parsed; everything around it passes unchanged."""
    from proxy.types import Call
    from proxy.upstream.openai_compat import OpenAICompatibleProvider

    call = Call(request_id="r", endpoint="chat/completions", method="POST", path="chat/completions",
                query_string="", headers=None, config=None)  # type: ignore[arg-type]
    assert OpenAICompatibleProvider._take_usage(call, block, keep) == expected
    if b"prompt_tokens\":3" in block:
        assert call.usage is not None and (call.usage.prompt_tokens, call.usage.completion_tokens) == (3, 2)
