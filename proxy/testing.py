"""Test helpers for relaygate and its plugins: a gateway and fake upstreams on loopback.

Each server runs its own event loop in a background thread, so a test can drive it
with the synchronous or the asynchronous OpenAI SDK alike:

    with FakeServer(make_fake_app()) as fake, Gateway(yaml_text, env={"URL": fake.url}) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="k")
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .server.app import STATE, create_app
from .server.listener import GatewayRunner
from .server.runtime import Runtime
from .upstream.provider import Provider

T = TypeVar("T")


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length): network reads, for fuzz tests."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


class FakeServer:
    """Run an aiohttp application on 127.0.0.1:<free port> in a thread of its own."""

    def __init__(self, app: web.Application | Callable[[], web.Application], host: str = "127.0.0.1") -> None:
        self._app_factory = app
        self.host = host
        self.port = 0
        self.app: web.Application | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=type(self).__name__)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def make_app(self) -> web.Application:
        factory = self._app_factory
        return factory if isinstance(factory, web.Application) else factory()

    def make_runner(self, app: web.Application) -> web.AppRunner:
        return web.AppRunner(app, handler_cancellation=True, access_log=None)

    async def _start(self) -> None:
        self.app = self.make_app()
        self._runner = self.make_runner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._runner is not None:
                self.call(self._runner.cleanup())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.access: list[dict[str, Any]] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.lines.append(text)
        if record.name == "relaygate.access":
            self.access.append(orjson.loads(record.getMessage()))


class Gateway(FakeServer):
    """The relaygate app on loopback, loaded from YAML text (or a file path).

    `env` is set in `os.environ` for the gateway's lifetime (for `${VAR}` and for SDKs
    that read the environment) and restored afterwards.
    """

    def __init__(
        self,
        config: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        extra_plugins: Iterable[tuple[str, object]] = (),
    ) -> None:
        super().__init__(self._build)
        self._tmp = tempfile.TemporaryDirectory(prefix="relaygate-test-")
        if isinstance(config, Path) or "\n" not in config:
            self.config_path = Path(config)
        else:
            self.config_path = Path(self._tmp.name) / "config.yaml"
            self.config_path.write_text(config)
        self.env = dict(env or {})
        self.extra_plugins = tuple(extra_plugins)
        self._saved_env: dict[str, str | None] = {}
        self._capture = _Capture()
        self._saved_level = logging.INFO

    def _build(self) -> web.Application:
        return create_app(self.config_path, extra_plugins=self.extra_plugins)

    def make_runner(self, app: web.Application) -> web.AppRunner:
        """The listener `relaygate serve` runs, with the config's `server.*` limits."""
        return GatewayRunner(app, handler_cancellation=True, access_log=None)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def access_log(self) -> list[dict[str, Any]]:
        return list(self._capture.access)

    def wait_access_log(self, count: int, *, timeout: float = 3.0) -> list[dict[str, Any]]:
        """The access log once it holds at least `count` records.

        A record is written when the response has ended, so it may land a moment after
        the client has read the response: wait for it rather than race it.
        """
        deadline = time.monotonic() + timeout
        while len(records := self.access_log) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} access records, have {len(records)}: {records}")
            time.sleep(0.01)
        return records

    @property
    def log_text(self) -> str:
        return "\n".join(self._capture.lines)

    @property
    def runtime(self) -> Runtime:
        """The configuration currently serving (changes on reload)."""
        assert self.app is not None
        return self.app[STATE].current

    def provider(self, name: str) -> Provider:
        """The started provider `name` of the current configuration."""
        return self.runtime.config.providers[name]

    def reload(self, config: str | None = None) -> bool:
        """Rewrite the config file (if given) and reload it, as SIGHUP does."""
        if config is not None:
            self.config_path.write_text(config)
        assert self.app is not None
        return self.call(self.app[STATE].reload())

    def __enter__(self) -> Gateway:
        for key, value in self.env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        root = logging.getLogger()
        self._saved_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self._capture)
        try:
            super().__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            self._restore()

    def _restore(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._capture)
        root.setLevel(self._saved_level)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._tmp.cleanup()


# ---------------------------------------------------------------- real servers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server that binds it may still race)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _terminate(proc: Any, timeout: float = 5) -> None:
    """Stop a server's process: SIGTERM, then SIGKILL if it lingers."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except Exception:
            proc.kill()
            proc.wait(5)


class RedisServer:
    """A private `redis-server` on a free loopback port, in a temporary directory.

    The tests of shared state run against the real server, never a mock. A missing
    `redis-server` raises (`.ci/setup --test` installs it): in CI that is a failure,
    not a skip. `stop()` and `start()` again (same port) model an outage.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self._dir = tempfile.TemporaryDirectory(prefix="relaygate-redis-")
        self._proc: Any = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The running server's process id (benchmarks read its CPU time)."""
        assert self._proc is not None, "redis-server is not running"
        return int(self._proc.pid)

    def start(self) -> RedisServer:
        import shutil
        import socket
        import subprocess

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed; run `bash .ci/setup --test`")
        args = [
            exe, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
            "--dir", self._dir.name, "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._proc.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _terminate(proc)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self._dir.cleanup()


class PrometheusServer:
    """A private `prometheus` on a free loopback port, scraping `targets` every `interval`.

    For end-to-end tests of `/metrics`: a real server parses the exposition and answers
    queries (`query`). A missing binary raises (`.ci/setup --test` installs the Debian
    package `prometheus`): in CI a failure, never a skip.
    """

    def __init__(self, targets: Iterable[str], *, interval: float = 1.0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.targets = list(targets)
        self.interval = interval
        self._dir = tempfile.TemporaryDirectory(prefix="relaygate-prometheus-")
        self._proc: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _config(self) -> str:
        seconds = f"{self.interval:g}s"
        targets = ", ".join(f'"{t}"' for t in self.targets)
        return (
            f"global: {{scrape_interval: {seconds}, evaluation_interval: {seconds}}}\n"
            "scrape_configs:\n"
            f"  - job_name: relaygate\n    scrape_timeout: {seconds}\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )

    def start(self) -> PrometheusServer:
        import shutil
        import subprocess
        import urllib.request

        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("prometheus is not installed; run `bash .ci/setup --test`")
        config = Path(self._dir.name) / "prometheus.yml"
        config.write_text(self._config())
        args = [
            exe, f"--config.file={config}", f"--storage.tsdb.path={self._dir.name}/data",
            f"--web.listen-address={self.host}:{self.port}", "--log.level=warn",
        ]  # fmt: skip
        self._log = open(Path(self._dir.name) / "prometheus.log", "wb")  # noqa: SIM115 - the child's stderr
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_text}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus was not ready on port {self.port} within 30 s: {self.log_text}")

    @property
    def log_text(self) -> str:
        return (Path(self._dir.name) / "prometheus.log").read_text(errors="replace")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (`/api/v1/query`)."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer = orjson.loads(resp.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def targets_health(self) -> list[dict[str, Any]]:
        """The scrape targets as Prometheus sees them (`health`, `lastError`, ...)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as resp:
            active: list[dict[str, Any]] = orjson.loads(resp.read())["data"]["activeTargets"]
        return active

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _terminate(proc, 10)
        if proc is not None:
            self._log.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self._dir.cleanup()
