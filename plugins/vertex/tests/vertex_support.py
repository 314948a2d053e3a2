"""Shared by the Vertex tests: the client key and a gateway config around the fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai

from proxy.testing import Gateway

CLIENT_KEY = "rg-vertex-client-key-0123456789"
HELLO = [{"role": "user", "content": "hello"}]


def config(url: str, account: Path, extra: str = "", *, providers: str = "", routes: str = "") -> str:
    return f"""
clients:
  keys:
    - {{name: team-v, key: {CLIENT_KEY}}}
providers:
  vertex:
    type: vertex
    project: my-proj-123
    location: us-central1
    base_url: {url}
    credentials_file: {account}
    refresh_margin: 1
{extra}
{providers}
routes:
{routes}
  - model: my-llama
    to: {{provider: vertex, model: meta/llama-3, endpoint_id: 1234567890}}
  - model: "gemini-*"
    to: {{provider: vertex, model: "google/{{model}}"}}
"""


def client_for(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)


def access_records(gw: Gateway, count: int) -> list[dict[str, Any]]:
    return gw.wait_access_log(count)
