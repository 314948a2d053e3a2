"""`type: demo`: deterministic offline answers, so a fresh checkout serves with no credentials.

It is a demo, not a model: chat and completions echo the last user text, embeddings are
derived from a hash of the input. Answers are OpenAI-shaped (stream and not, usage,
tool calls when a tool is required) so any client can be tried against the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ..config.options import Options
from ..hookspecs import hookimpl
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, Call, ModelInfo, Reply, Target, Usage
from ..upstream.provider import Provider, RegisterProvider
from ..upstream.sse import DONE, event

MODELS = ("demo-chat", "demo-embed")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


class DemoProvider(Provider):
    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        #: Pause between streamed chunks, to watch streaming (and disconnects) happen.
        self.chunk_delay: float = options.number("chunk_delay", 0.0)
        self.dimensions: int = options.int("dimensions", 16, minimum=1)

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(m, self.name) for m in MODELS]

    async def send(self, call: Call, target: Target) -> Reply:
        body = call.body or {}
        if call.endpoint == EMBEDDINGS:
            return self._embeddings(call, target, body)
        if call.endpoint == CHAT:
            messages = body.get("messages") or []
            prompt = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
            last = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        elif call.endpoint == COMPLETIONS:
            raw = body.get("prompt")
            prompt = last = raw if isinstance(raw, str) else " ".join(str(p) for p in raw or ())
        else:
            return await super().send(call, target)
        answer = f"This is relaygate's demo provider. You said: {last}".strip()
        usage = Usage(_tokens(prompt), _tokens(answer))
        call.usage = usage
        rid = "chatcmpl-demo" + hashlib.sha256(prompt.encode()).hexdigest()[:20]
        tool = _forced_tool(body) if call.endpoint == CHAT else None
        if call.stream:
            gen = self._chat_stream if call.endpoint == CHAT else self._completion_stream
            return Reply(stream=gen(call, target, rid, answer, usage, tool), content_type="text/event-stream")
        if call.endpoint == CHAT:
            message: dict[str, Any] = {"role": "assistant", "content": None if tool else answer, "refusal": None}
            if tool:
                message["tool_calls"] = [_tool_call(rid, tool)]
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool else "stop",
            }
            out = {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": target.model,
                "choices": [choice],
                "usage": _usage(usage),
            }
        else:
            out = {
                "id": rid.replace("chatcmpl", "cmpl"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": target.model,
                "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}],
                "usage": _usage(usage),
            }
        return Reply(body=orjson.dumps(out))

    async def _chat_stream(
        self, call: Call, target: Target, rid: str, answer: str, usage: Usage, tool: str | None
    ) -> AsyncGenerator[bytes, None]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return event(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": target.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
            )

        yield chunk({"role": "assistant", "content": ""})
        if tool:
            yield chunk({"tool_calls": [{"index": 0, **_tool_call(rid, tool)}]})
        else:
            for word in _words(answer):
                await self._pause()
                yield chunk({"content": word})
        yield chunk({}, "tool_calls" if tool else "stop")
        if call.include_usage:
            yield event(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": target.model,
                    "choices": [],
                    "usage": _usage(usage),
                }
            )
        yield DONE

    async def _completion_stream(
        self, call: Call, target: Target, rid: str, answer: str, usage: Usage, tool: str | None
    ) -> AsyncGenerator[bytes, None]:
        created = int(time.time())
        rid = rid.replace("chatcmpl", "cmpl")
        for _i, word in enumerate(_words(answer)):
            await self._pause()
            yield event(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": target.model,
                    "choices": [{"index": 0, "text": word, "logprobs": None, "finish_reason": None}],
                }
            )
        yield event(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": target.model,
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
            }
        )
        if call.include_usage:
            yield event(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": target.model,
                    "choices": [],
                    "usage": _usage(usage),
                }
            )
        yield DONE

    async def _pause(self) -> None:
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)

    def _embeddings(self, call: Call, target: Target, body: dict[str, Any]) -> Reply:
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else list(raw or ())
        requested = body.get("dimensions")
        dims: int = requested if isinstance(requested, int) and requested > 0 else self.dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = _vector(orjson.dumps(text), dims)
            value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(_tokens(t) if isinstance(t, str) else len(t) for t in texts)
        call.usage = Usage(tokens, 0)
        out = {
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Reply(body=orjson.dumps(out))


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _vector(seed: bytes, dims: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The tool the request requires the demo to call, if any."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    if choice == "required":
        first = tools[0].get("function") if isinstance(tools[0], dict) else None
        return first.get("name") if isinstance(first, dict) else None
    return None


def _tool_call(rid: str, name: str) -> dict[str, Any]:
    return {"id": "call_" + rid[-12:], "type": "function", "function": {"name": name, "arguments": "{}"}}


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("demo", DemoProvider)
