"""schemathesis fuzzes the gateway's own routes from OpenAI's OpenAPI spec.

Requests generated from the spec (valid and, through schemathesis' negative testing,
invalid) go to a gateway in front of the fake OpenAI upstream. The gateway itself must
never answer 5xx: whatever a client sends is either forwarded or refused with a 4xx in
OpenAI's error shape. A 5xx the upstream chose is relayed as such and is not the
gateway's failure, but the fake upstream answers like OpenAI, with 4xx for bad input.
The example count is small: this runs in CI on every change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from core_helpers import CLIENT_KEY, ENV, UPSTREAM_KEY, config_yaml
from fakes.openai_upstream import FakeOpenAI
from hypothesis import HealthCheck, settings
from openapi_check import spec, validate_error
from schemathesis import GenerationMode

from proxy.testing import FakeServer, Gateway

#: The gateway's own routes (pass-through routes are the upstream's business).
ROUTES = {
    "/chat/completions": "post",
    "/completions": "post",
    "/embeddings": "post",
    "/models": "get",
    "/models/{model}": "get",
}


#: Codes of 5xx answers that relay an upstream's failure rather than the gateway's own.
RELAYED = {"upstream_error", "upstream_unavailable", "upstream_timeout"}


def _gateway_spec() -> dict[str, Any]:
    full = spec()
    pruned = copy.deepcopy({k: v for k, v in full.items() if k != "paths"})
    pruned["paths"] = {path: {ROUTES[path]: full["paths"][path][ROUTES[path]]} for path in ROUTES}
    pruned["servers"] = [{"url": "/v1"}]
    return pruned


SCHEMA = schemathesis.openapi.from_dict(_gateway_spec())
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with FakeServer(fake.app) as server, Gateway(config_yaml(server.url), env=ENV) as gw:
        yield gw


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_from_the_gateway(case: schemathesis.Case, gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    response = case.call(base_url=f"{gateway.url}/v1", headers=headers, timeout=20)
    if response.status_code >= 400:
        error = validate_error(orjson.loads(response.content))
        if response.status_code >= 500:  # only the upstream's own failure, relayed (the fake has bugs too)
            assert error["code"] in RELAYED, (response.status_code, response.content[:500], case.body)
    assert "ERROR relaygate" not in gateway.log_text  # no unhandled error in the gateway
