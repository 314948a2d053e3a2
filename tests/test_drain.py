"""Graceful drain on SIGTERM/SIGINT: the real CLI, one worker and `--workers 2`.

Readiness turns 503 at once, new requests are served for `server.drain_delay`, the
listener closes, streams in flight finish within `server.shutdown_grace` (with [DONE]) or
end with one SSE error event when it runs out, a request still waiting gets a 503, and
the process exits 0.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from core_helpers import CLIENT_KEY, ENV, config_yaml, raw, sse_data, until
from fakes.openai_upstream import Behaviour, FakeOpenAI
from telemetry_helpers import Served

from proxy.testing import FakeServer

STREAMS = 10
CHAT = [{"role": "user", "content": "drain me"}]


@pytest.fixture
def slow_upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=ENV["UPSTREAM_KEY"])
    fake.on("slow", Behaviour(chunk_delay=0.1, words=30))  # about 3 s per stream
    fake.on("endless", Behaviour(chunk_delay=0.2, words=1000))  # far longer than any grace here
    fake.on("stuck", Behaviour(delay=60))  # no answer at all
    with FakeServer(fake.app) as server:
        fake.url = server.url
        yield fake


class Stream(threading.Thread):
    """One streamed chat, read to its end on its own connection."""

    def __init__(self, port: int, model: str, stream: bool = True) -> None:
        super().__init__(daemon=True)
        self.port, self.model, self.stream = port, model, stream
        self.started = threading.Event()
        self.status = 0
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            body = orjson.dumps({"model": self.model, "messages": CHAT, "stream": self.stream})
            conn.request("POST", "/v1/chat/completions", body,
                         {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"})
            if not self.stream:
                self.started.set()  # sent; the answer is what the test waits for
            resp = conn.getresponse()
            self.status = resp.status
            first = resp.read1() if self.stream else b""
            self.started.set()
            self.body = first + resp.read()
            conn.close()
        except BaseException as exc:
            self.error = exc
            self.started.set()


def _serve(tmp_path: Path, upstream: FakeOpenAI, workers: int, server: str) -> Served:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(upstream.url, server=server))
    return Served(config, "--workers", str(workers), env=ENV)


def _all_listening(served: Served, workers: int) -> None:
    if workers > 1:
        assert until(lambda: served.stderr.count("relaygate serving on") == workers, timeout=20), served.stderr


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _start(port: int, model: str, count: int, stream: bool = True) -> list[Stream]:
    streams = [Stream(port, model, stream) for _ in range(count)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(30) and s.error is None, s.error
    return streams


@pytest.mark.parametrize("workers", [1, 2])
def test_streams_in_flight_finish_with_done(tmp_path: Path, slow_upstream: FakeOpenAI, workers: int) -> None:
    with _serve(tmp_path, slow_upstream, workers, "  drain_delay: 1\n  shutdown_grace: 60\n") as served:
        _all_listening(served, workers)
        streams = _start(served.port, "slow", STREAMS)
        served.signal(signal.SIGTERM)
        t0 = time.monotonic()
        served.signal(signal.SIGINT)  # a second signal (Ctrl-C reaches the workers twice) changes nothing
        # Readiness fails at once; requests are still served during drain_delay.
        assert until(lambda: raw("GET", f"{served.url}/readyz", key=None, timeout=5).status == 503, timeout=5)
        ready = raw("GET", f"{served.url}/readyz", key=None, timeout=5)
        assert ready.json["error"]["code"] == "draining"
        assert raw("GET", f"{served.url}/healthz", key=None, timeout=5).status == 200
        if time.monotonic() - t0 < 0.8:  # still inside the drain_delay on a loaded box
            late = raw("POST", f"{served.url}/v1/chat/completions",
                       orjson.dumps({"model": "fast", "messages": CHAT}), timeout=10)
            assert late.status == 200
        # Then the listener closes, while the streams go on.
        assert until(lambda: _refused(served.port), timeout=15)
        assert any(s.is_alive() for s in streams), "the streams were meant to outlive the drain_delay"
        assert served.wait(60) == 0, served.stderr
        for s in streams:
            s.join(10)
            assert s.error is None and s.status == 200
            events = sse_data(s.body)
            assert events[-1] == b"[DONE]", s.body[-300:]
            text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                           if orjson.loads(e)["choices"])
            assert text.startswith("Echo: drain me and and")
        assert "drained" in served.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_short_grace_ends_streams_with_an_error_event(tmp_path: Path, slow_upstream: FakeOpenAI,
                                                        workers: int) -> None:
    with _serve(tmp_path, slow_upstream, workers, "  shutdown_grace: 1\n") as served:
        _all_listening(served, workers)
        streams = _start(served.port, "endless", STREAMS)
        waiting = _start(served.port, "stuck", 2, stream=False)
        time.sleep(0.2)  # the non-streamed requests reach the upstream
        served.signal(signal.SIGINT)
        assert served.wait(60) == 0, served.stderr
        for s in streams:
            s.join(10)
            assert s.error is None and s.status == 200
            assert b"[DONE]" not in s.body
            tail = s.body.replace(b"\r\n", b"\n").rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
            assert tail.startswith(b"event: error\ndata: "), s.body[-300:]
            error = orjson.loads(tail.split(b"data: ", 1)[1])["error"]
            assert error["code"] == "gateway_shutting_down" and error["type"] == "server_error"
            assert s.body.count(b"event: error") == 1
        for s in waiting:
            s.join(10)
            assert s.error is None and s.status == 503, (s.status, s.body)
            assert orjson.loads(s.body)["error"]["code"] == "gateway_shutting_down"
        records = [r for r in served.access if r["model"] in ("endless", "stuck")]
        assert len(records) == STREAMS + 2
        assert {r["error_type"] for r in records} == {"gateway_internal"}


def test_sighup_still_reloads_before_a_drain(tmp_path: Path, slow_upstream: FakeOpenAI) -> None:
    with _serve(tmp_path, slow_upstream, 1, "") as served:
        served.signal(signal.SIGHUP)
        assert until(lambda: "reloaded" in served.stderr), served.stderr
        assert raw("GET", f"{served.url}/readyz", key=None).status == 200
        served.signal(signal.SIGTERM)
        assert served.wait(30) == 0


async def test_readyz_is_503_while_starting_and_draining() -> None:
    from aiohttp.test_utils import make_mocked_request

    from proxy.server import operations
    from proxy.server.app import GatewayState

    gateway = GatewayState("unused.yaml")
    handler = operations.readyz(gateway)
    starting = await handler(make_mocked_request("GET", "/readyz"))
    assert starting.status == 503 and b'"code":"starting"' in starting.body.replace(b" ", b"")  # type: ignore[union-attr]
    gateway.drain.draining = True
    draining = await handler(make_mocked_request("GET", "/readyz"))
    assert draining.status == 503 and b'"code":"draining"' in draining.body.replace(b" ", b"")  # type: ignore[union-attr]
    post = await handler(make_mocked_request("POST", "/readyz"))
    assert post.status == 405
