"""The OpenAI Agents SDK (its default Responses model) running a tool agent on Bedrock Converse."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from bedrock_helpers import CLIENT_KEY
from fakes.bedrock import FakeBedrock

from proxy.testing import Gateway


@pytest.mark.parametrize(("stream", "reasoning"), [(False, False), (True, False), (False, True), (True, True)])
async def test_agent_with_a_function_tool_runs_to_completion(
    gw: Gateway, fake: FakeBedrock, stream: bool, reasoning: bool
) -> None:
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider
    from openai.types.shared import Reasoning

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    settings = ModelSettings(reasoning=Reasoning(effort="low"), max_tokens=600) if reasoning else ModelSettings()
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)
    run_config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True),
                           tracing_disabled=True)  # fmt: skip
    agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather], model="claude",
                  model_settings=settings)  # fmt: skip
    question = "What is the weather in Paris? [[use-tool:1]]"
    result: Any
    if stream:
        result = Runner.run_streamed(agent, question, run_config=run_config)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(agent, question, run_config=run_config)
    assert calls == ["Paris"]
    assert result.final_output == "Tool said: sunny in Paris"
    second = fake.requests[-1].json
    assert second["messages"][-1]["content"][0]["toolResult"]["content"] == [{"text": "sunny in Paris"}]
    if reasoning:  # Claude's signed thought went back with the tool result (the fake checks the signature)
        assert "reasoningContent" in second["messages"][1]["content"][0]
    await client.close()
