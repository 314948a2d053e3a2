"""Config reload: SIGHUP on the real CLI, and `Gateway.reload` in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from core_helpers import CLIENT_KEY, config_yaml, post_json, raw, sse_data, wait_healthy
from core_helpers import until as _until
from fakes.openai_upstream import FakeOpenAI, free_port

from proxy.testing import Gateway

V1 = """\
providers:
  demo: {type: demo}
  slowdemo: {type: demo, chunk_delay: 0.15}
routes:
  - {model: slow, to: {provider: slowdemo, model: slow-v1}}
  - {model: old-route, to: demo}
"""

V2 = """\
providers:
  demo: {type: demo}
routes:
  - {model: slow, to: {provider: demo, model: slow-v2}}
  - {model: new-route, to: demo}
"""

BAD = """\
providers:
  demo: {type: demo}
routes:
  - {model: new-route, to: demo}
  - {model: broken, to: missing-provider}
"""

CHAT = [{"role": "user", "content": "one two three four five six seven eight"}]


class Served:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], stderr: Path, config: Path) -> None:
        self.url, self.proc, self.stderr_path, self.config = url, proc, stderr, config
        self.stdout_path = stderr.with_name("stdout.txt")

    @property
    def access(self) -> list[dict[str, object]]:
        """The access log: JSON lines on stdout."""
        return [orjson.loads(line) for line in self.stdout_path.read_text().splitlines()]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def reload(self, text: str) -> None:
        self.config.write_text(text)
        os.kill(self.proc.pid, signal.SIGHUP)

    def chat(self, model: str, **extra: object):  # type: ignore[no-untyped-def]
        return post_json(f"{self.url}/v1/chat/completions", {"model": model, "messages": CHAT, **extra}, key=None)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config = tmp_path / "relaygate.yaml"
    config.write_text(V1)
    port = free_port()
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err, stderr.with_name("stdout.txt").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
                                stdout=out, stderr=err)
    server = Served(f"http://127.0.0.1:{port}", proc, stderr, config)
    try:
        wait_healthy(server.url, proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_sighup_reloads_good_file_and_keeps_inflight_stream(served: Served) -> None:
    assert served.chat("old-route").status == 200
    assert served.chat("new-route").status == 404

    result: dict[str, object] = {}
    started = threading.Event()

    def slow_stream() -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", int(served.url.rsplit(":", 1)[1]), timeout=30)
        conn.request("POST", "/v1/chat/completions", orjson.dumps({"model": "slow", "messages": CHAT, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        result["status"] = resp.status
        first = resp.read1()
        started.set()
        result["body"] = first + resp.read()
        conn.close()

    thread = threading.Thread(target=slow_stream)
    thread.start()
    try:
        assert started.wait(10)
        served.reload(V2)
        assert _until(lambda: served.chat("new-route").status == 200), served.stderr
        assert thread.is_alive(), "the slow stream should still be running across the reload"
        assert served.chat("old-route").status == 404
    finally:
        thread.join(30)
    assert result["status"] == 200
    events = sse_data(result["body"])  # type: ignore[arg-type]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"slow-v1"}, "the in-flight stream kept its original config"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.endswith("You said: " + CHAT[0]["content"])
    # New requests for the same model use the new config.
    assert served.chat("slow").json["model"] == "slow-v2"
    assert "reloaded" in served.stderr
    records = served.access
    assert any(r["model"] == "slow" and r["upstream_model"] == "slow-v1" and r["status"] == 200 for r in records)
    assert not any("request_id" not in r for r in records)


def test_sighup_refuses_bad_file_and_keeps_serving(served: Served) -> None:
    served.reload(BAD)
    assert _until(lambda: "refused" in served.stderr), served.stderr
    err = served.stderr
    assert f"{served.config}:5: routes[1].to" in err and "missing-provider" in err
    assert served.proc.poll() is None
    assert served.chat("old-route").status == 200, "the old config keeps serving"
    assert served.chat("new-route").status == 404
    # A later good file is still picked up.
    served.reload(V2)
    assert _until(lambda: served.chat("new-route").status == 200)


def test_sighup_with_unparseable_file(served: Served) -> None:
    served.reload("providers: {demo: {type: demo}\n")
    assert _until(lambda: "refused" in served.stderr), served.stderr
    assert "invalid YAML" in served.stderr
    assert served.chat("old-route").status == 200


# ------------------------------------------------------------------ in process


def test_reload_in_process(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, routes="  - {model: gpt-4o, to: up}\n"))
    body = {"model": "gpt-4o-mini", "messages": CHAT}
    assert post_json(f"{gw.base_url}/chat/completions", body).status == 404
    assert gw.reload(config_yaml(upstream.url, routes="  - {model: \"gpt-4o*\", to: up}\n"))
    assert post_json(f"{gw.base_url}/chat/completions", body).status == 200
    assert not gw.reload("providers: [\n")
    assert post_json(f"{gw.base_url}/chat/completions", body).status == 200
    assert "refused" in gw.log_text


def test_reload_changes_client_keys(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url))
    assert raw("GET", f"{gw.base_url}/models").status == 200
    text = config_yaml(upstream.url).replace("${CLIENT_KEY}", "sk-rotated-key-000")
    assert gw.reload(text)
    assert raw("GET", f"{gw.base_url}/models", key=CLIENT_KEY).status == 401
    assert raw("GET", f"{gw.base_url}/models", key="sk-rotated-key-000").status == 200


def test_reload_mid_stream_keeps_upstream_session(upstream: FakeOpenAI,
                                                   make_gateway: Callable[..., Gateway]) -> None:
    """The old config's provider (and its connection pool) lives until its last stream ends."""
    from fakes.openai_upstream import Behaviour

    gw = make_gateway(config_yaml(upstream.url, routes="  - {model: \"*\", to: {provider: up, model: gpt-4o}}\n"))
    upstream.on("gpt-4o", Behaviour(chunk_delay=0.05, words=20))
    body: dict[str, bytes] = {}
    started = threading.Event()

    def stream() -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", orjson.dumps({"model": "x", "messages": CHAT, "stream": True}),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"})
        resp = conn.getresponse()
        first = resp.read1()
        started.set()
        body["data"] = first + resp.read()
        conn.close()

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert started.wait(10)
        new_routes = "  - {model: \"*\", to: {provider: up, model: gpt-4o-mini}}\n"
        assert gw.reload(config_yaml(upstream.url, routes=new_routes))
        assert post_json(f"{gw.base_url}/chat/completions", {"model": "x", "messages": CHAT}).json["model"] \
            == "gpt-4o-mini"
        assert thread.is_alive()
    finally:
        thread.join(30)
    events = sse_data(body["data"])
    assert events[-1] == b"[DONE]" and not any(e.startswith(b"{\"error\"") for e in events)
    assert upstream.completed[0] == "gpt-4o" and upstream.disconnects == []
