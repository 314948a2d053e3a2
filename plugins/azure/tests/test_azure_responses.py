"""The Responses API on Azure: translated onto a classic deployment, native in v1 mode.

Azure-style clients (`AzureOpenAI.responses`) reach the gateway at `/openai/responses`,
`/openai/v1/responses` and `/openai/deployments/{deployment}/responses`.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
from azure_support import CLIENT_KEY, UPSTREAM_KEY, access_record, raw_post
from openapi_check import parse_response_stream, validate_response, validate_response_stream

from proxy.testing import Gateway

ENV = {"AZURE_KEY": UPSTREAM_KEY}


def config(url: str, mode: str = "") -> str:
    version = 'api_version: "2024-10-21"' if not mode else "api_mode: v1"
    return f"""
clients:
  keys:
    - {{name: team-a, key: {CLIENT_KEY}}}
    - {{name: team-b, key: other-key-0123456789}}
providers:
  azure: {{type: azure, base_url: {url}, api_key: "${{AZURE_KEY}}", {version}}}
routes:
  - model: gpt-4o
    to: {{provider: azure, model: prod-gpt4o}}
"""


def azure_client(gw: Gateway) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=gw.url, api_key=CLIENT_KEY, api_version="2025-04-01-preview",
                              max_retries=0)  # fmt: skip


def test_azure_client_on_a_classic_deployment(azure: tuple[Any, str]) -> None:
    state, url = azure
    with Gateway(config(url), env=ENV) as gw, azure_client(gw) as client:
        r = client.responses.create(model="gpt-4o", input="hello azure", instructions="Be formal.")
        assert r.output_text == "Hello from Azure" and r.model == "gpt-4o-2024-08-06"
        validate_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
        seen = state.seen()
        assert seen["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
        assert seen["query"] == {"api-version": "2024-10-21"} and seen["headers"]["api-key"] == UPSTREAM_KEY
        assert seen["body"]["messages"][0] == {"role": "system", "content": "Be formal."}
        with client.responses.stream(model="gpt-4o", input="stream azure") as stream:
            final = stream.get_final_response()
        assert final.output_text.strip() == "Hello from Azure"  # the fake streams "word " pieces
        assert client.responses.retrieve(r.id).output_text == "Hello from Azure"
        record = access_record(gw, 3)[0]
        assert (record["provider"], record["route"], record["status"]) == ("azure", "/v1/responses", 200)


def test_deployment_route_and_content_filter(azure: tuple[Any, str]) -> None:
    _, url = azure
    with Gateway(config(url), env=ENV) as gw:
        status, _, body = raw_post(f"{gw.url}/openai/deployments/gpt-4o/responses?api-version=2025-04-01-preview",
                                   {"input": "please filter the answer"}, {"api-key": CLIENT_KEY})  # fmt: skip
        assert status == 200, body
        response = validate_response(orjson.loads(body))
        assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "content_filter"}
        status, _, body = raw_post(f"{gw.url}/openai/deployments/gpt-4o/responses", {"input": "hi", "stream": True},
                                   {"api-key": CLIENT_KEY})  # fmt: skip
        events = validate_response_stream(parse_response_stream(body), terminal="response.completed")
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text.strip() == "Hello from Azure"


def test_v1_mode_passes_through_natively_with_ownership(azure: tuple[Any, str]) -> None:
    state, url = azure
    with Gateway(config(url, "v1"), env=ENV) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/openai/v1", api_key=CLIENT_KEY, max_retries=0)
        r = client.responses.create(model="gpt-4o", input="native on azure")
        assert r.id.startswith("resp_azure") and r.output_text == "Hello from Azure"
        seen = state.seen()
        assert seen["path"] == "/openai/v1/responses" and seen["body"]["model"] == "prod-gpt4o"
        assert client.responses.retrieve(r.id).id == r.id
        other = openai.OpenAI(base_url=f"{gw.url}/openai/v1", api_key="other-key-0123456789", max_retries=0)
        try:
            other.responses.retrieve(r.id)
            raise AssertionError("another key read the response")
        except openai.NotFoundError:
            pass
        record = access_record(gw, 3)[0]
        assert (record["tokens_in"], record["tokens_out"]) == (8, 3)
        client.close()
        other.close()


def test_tool_round_trips_and_errors_on_a_deployment(azure: tuple[Any, str]) -> None:
    state, url = azure
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    with Gateway(config(url), env=ENV) as gw, azure_client(gw) as client:
        first = client.responses.create(model="gpt-4o", input="weather?", tools=[tool], tool_choice="required")  # type: ignore[list-item]
        call = next(item for item in first.output if item.type == "function_call")
        assert (call.call_id, call.arguments) == ("call_azure_1", '{"city":"Paris"}')
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}
        chained = client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output],  # type: ignore[list-item]
                                          tools=[tool])  # type: ignore[list-item]  # fmt: skip
        assert chained.output_text == "Hello from Azure"
        assert [m["role"] for m in state.seen()["body"]["messages"]] == ["user", "assistant", "tool"]
        items = [{"role": "user", "content": "weather?"},
                 *[item.model_dump(mode="json", exclude_unset=True) for item in first.output], output]  # fmt: skip
        client.responses.create(model="gpt-4o", input=items, tools=[tool])  # type: ignore[arg-type, list-item]
        assert state.seen()["body"]["messages"][1]["tool_calls"][0]["id"] == "call_azure_1"
        try:
            client.responses.create(model="gpt-4o", input="rate limit me")
            raise AssertionError("expected a 429")
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
