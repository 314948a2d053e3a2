"""Traces reach Bedrock too: the attempt's `traceparent` rides along the SigV4-signed Converse call."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
from aiohttp import web
from bedrock_helpers import CLIENT_KEY, config_yaml
from fakes.bedrock import FakeBedrock

from proxy.testing import FakeServer, Gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def collector_url() -> Iterator[str]:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def app() -> web.Application:
        application = web.Application()
        application.router.add_post("/v1/traces", accept)
        return application

    with FakeServer(app) as server:
        yield server.url


@pytest.mark.parametrize("stream", [False, True])
def test_converse_carries_the_trace_context(
    fake: FakeBedrock, collector_url: str, make_gateway: Callable[..., Gateway], stream: bool
) -> None:
    telemetry = f"telemetry:\n  otlp: {{endpoint: \"{collector_url}\"}}\n"
    gw = make_gateway(telemetry + config_yaml(fake.url))  # type: ignore[attr-defined]
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        answer = client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "Hi"}], stream=stream,
            extra_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        )
        if stream:
            list(answer)  # type: ignore[arg-type]
    seen = fake.requests[-1]
    assert seen.raw_path.endswith("/converse-stream" if stream else "/converse")
    traceparent = {k.lower(): v for k, v in seen.headers.items()}["traceparent"]
    assert traceparent.startswith(f"00-{TRACE_ID}-") and not traceparent.endswith("-00f067aa0ba902b7-01")
