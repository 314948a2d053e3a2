"""Helpers for the telemetry and operations tests: scraping /metrics, and the CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from core_helpers import wait_healthy
from fakes.openai_upstream import free_port
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """One /metrics answer, parsed with prometheus-client's own text parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples called `name` whose labels include `labels`."""
        return sum(s.value for s in self.select(name, **labels))

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def label_values(self, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels}


def scrape(base: str, accept: str | None = None) -> Scrape:
    req = urllib.request.Request(f"{base}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return Scrape(resp.read().decode())


class Served:
    """`relaygate serve` in a subprocess on a free port, its stdout and stderr in files."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = config.with_name(config.stem + ".stderr")
        self.stdout_path = config.with_name(config.stem + ".stdout")
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(self.port), *args]
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**os.environ, **(env or {})})

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def access(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stdout_path.read_text().splitlines() if line.startswith("{")]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> Served:
        try:
            wait_healthy(self.url, self.proc, timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
