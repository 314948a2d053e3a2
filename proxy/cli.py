"""`relaygate serve | check | plugins` (also `python -m proxy`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import orjson

from .builtin.accesslog import LineWriter
from .errors import ConfigError
from .limits.config import unshared_limits
from .plugins import describe, make_plugin_manager
from .server.runtime import Runtime, load_runtime
from .telemetry.names import MULTIPROC_ENV

log = logging.getLogger("relaygate")


def setup_logging(level: str = "INFO") -> None:
    """Access records (JSON lines) go to stdout; everything else to stderr."""
    access = logging.getLogger("relaygate.access")
    if not access.handlers:
        access.addHandler(LineWriter(sys.stdout.buffer))
        access.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load(path: str) -> Runtime | None:
    try:
        return load_runtime(path)
    except ConfigError as exc:
        print(f"relaygate: {path} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    runtime = _load(args.file)
    if runtime is None:
        return 1
    config = runtime.config
    print(
        f"{args.file}: ok ({len(config.providers)} providers, {len(config.routes)} routes, "
        f"{'open' if config.open else f'{len(config.clients or ())} client keys'})"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = make_plugin_manager()
    sys.stdout.write(orjson.dumps([asdict(p) for p in describe(pm)], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _run_worker(
    path: str, host: str, port: int, reuse_port: bool, runtime: Runtime | None, workers: int = 1
) -> None:
    from .server.app import create_app
    from .server.listener import serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(path, runtime=runtime, handle_sighup=True, drain_on_signals=True, workers=workers)
    serve(
        app,
        host=host,
        port=port,
        reuse_port=reuse_port,
        on_ready=lambda: log.info("relaygate serving on http://%s:%s (pid %s)", host, port, os.getpid()),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    runtime = _load(args.config)
    if runtime is None:
        return 1
    server = runtime.config.server
    setup_logging(server.log_level)
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    if runtime.config.open and not is_loopback(host):
        print(
            f"relaygate: refusing to serve an open gateway (no clients: section) on {host}; "
            "add client keys or bind to 127.0.0.1",
            file=sys.stderr,
        )
        return 1
    problem = unshared_limits(runtime.config.has_limits, runtime.config.state.redis, args.workers)
    if problem is not None:
        print(f"relaygate: refusing to start: {problem}", file=sys.stderr)
        return 1
    if args.workers <= 1:
        # One process keeps its metrics in memory: a directory inherited from the
        # environment could hold another run's numbers, which would be summed in.
        os.environ.pop(MULTIPROC_ENV, None)
        _run_worker(args.config, host, port, False, runtime)
        return 0
    return _supervise(args, host, port)


def _supervise(args: argparse.Namespace, host: str, port: int) -> int:
    """Fork workers that share the port with SO_REUSEPORT; forward signals to them.

    Each worker drains on its own when SIGTERM/SIGINT is forwarded. The workers' metrics
    go to a directory made here (set in the environment before any worker imports
    prometheus-client) and removed when the last worker has exited.
    """
    metrics_dir = tempfile.mkdtemp(prefix="relaygate-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    log.info("metrics of %d workers are summed in %s", args.workers, metrics_dir)
    try:
        return _fork_workers(args, host, port, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _fork_workers(args: argparse.Namespace, host: str, port: int, metrics_dir: str) -> int:
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                _run_worker(args.config, host, port, True, None, args.workers)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
        _forget_worker(child, metrics_dir)
    return status


def _forget_worker(pid: int, metrics_dir: str) -> None:
    """A worker exited: its share of the live gauges (requests in flight) no longer counts."""
    for path in Path(metrics_dir).glob(f"gauge_live*_{pid}.db"):
        path.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaygate", description="A pluggable gateway for the OpenAI API.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway in the foreground (SIGHUP reloads the config)")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a config file; exit 1 with its errors")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
    plugins = sub.add_parser("plugins", help="print the loaded plugins as JSON")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
