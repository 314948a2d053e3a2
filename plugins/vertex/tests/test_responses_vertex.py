"""The Responses API on Vertex AI (translated onto its OpenAI-compatible chat endpoint).

Driven by the openai SDK's `responses` client and by the OpenAI Agents SDK, whose default
model speaks the Responses API: an agent with a function tool runs to completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openapi_check import parse_response_stream, validate_response, validate_response_stream
from vertex_support import CLIENT_KEY, client_for, config

from proxy.testing import Gateway

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip


def test_text_stream_and_tools(google: tuple[Any, str, Path]) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        r = client.responses.create(model="gemini-2.0-flash", input="hello", metadata={"k": "v"}, user="u1")
        assert r.output_text == "Hello from Gemini" and r.metadata == {"k": "v"}
        validate_response(r.model_dump(mode="json", exclude_unset=True, by_alias=True))
        sent = state.seen()["body"]
        assert sent["model"] == "google/gemini-2.0-flash" and sent["messages"] == [{"role": "user", "content": "hello"}]
        assert "metadata" not in sent and "user" not in sent  # Vertex refuses what it does not know

        with client.responses.stream(model="gemini-2.0-flash", input="hello") as stream:
            final = stream.get_final_response()
        assert final.output_text == "Hello from Gemini" and final.usage is not None and final.usage.total_tokens == 10

        first = client.responses.create(model="gemini-2.0-flash", input="hi", tools=[WEATHER], tool_choice="required")
        call = next(item for item in first.output if item.type == "function_call")
        assert (call.name, call.arguments) == ("get_weather", '{"city":"Rome"}')
        second = client.responses.create(
            model="gemini-2.0-flash", previous_response_id=first.id, tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "warm"}],
        )  # fmt: skip
        assert second.output_text == "Gemini heard: warm"
        assert [m["role"] for m in state.seen()["body"]["messages"]] == ["user", "assistant", "tool"]


def test_raw_stream_is_spec_valid(google: tuple[Any, str, Path]) -> None:
    _, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        raw = client.responses.with_raw_response.create(model="gemini-2.0-flash", input="hi", stream=True)
        events = validate_response_stream(parse_response_stream(raw.http_response.read()))
        assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize("stream", [False, True])
async def test_agents_sdk_runs_a_tool_agent_to_completion(google: tuple[Any, str, Path], stream: bool) -> None:
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    _, url, account = google
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    with Gateway(config(url, account)) as gw:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
        run_config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True),
                               tracing_disabled=True)  # fmt: skip
        agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model="gemini-2.0-flash")
        if stream:
            result = Runner.run_streamed(agent, "Please use the tool for Rome", run_config=run_config)
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, "Please use the tool for Rome", run_config=run_config)  # type: ignore[assignment]
        assert seen == ["Rome"]
        assert result.final_output == "Gemini heard: sunny in Rome"
        records = gw.wait_access_log(2)
        assert [r["route"] for r in records[-2:]] == ["/v1/responses", "/v1/responses"]
        assert all(r["status"] == 200 and r["tokens_out"] for r in records[-2:])
        await client.close()


def test_resent_items_structured_output_images_and_errors(google: tuple[Any, str, Path]) -> None:
    state, url, account = google
    with Gateway(config(url, account)) as gw, client_for(gw) as client:
        first = client.responses.create(model="gemini-2.0-flash", input="Please use the tool", tools=[WEATHER])
        call = next(item for item in first.output if item.type == "function_call")
        items = [{"role": "user", "content": "Please use the tool"},
                 *[item.model_dump(mode="json", exclude_unset=True) for item in first.output],
                 {"type": "function_call_output", "call_id": call.call_id, "output": "cold"}]  # fmt: skip
        second = client.responses.create(model="gemini-2.0-flash", input=items, tools=[WEATHER], store=False)  # type: ignore[arg-type]
        assert second.output_text == "Gemini heard: cold"

        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        client.responses.create(model="gemini-2.0-flash", input="json",
                                text={"format": {"type": "json_schema", "name": "r", "schema": schema}})  # fmt: skip
        assert state.seen()["body"]["response_format"] == {"type": "json_schema",
                                                           "json_schema": {"name": "r", "schema": schema}}  # fmt: skip
        image = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkAAIAAAoAAv/"
                 "lxKUAAAAASUVORK5CYII=")
        client.responses.create(model="gemini-2.0-flash", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": image, "detail": "high"}]}])  # fmt: skip
        part = state.seen()["body"]["messages"][0]["content"][0]
        assert part == {"type": "image_url", "image_url": {"url": image}}  # Vertex takes no `detail`

        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="gemini-2.0-flash", input="google 429")
