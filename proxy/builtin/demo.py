"""`type: demo`: deterministic offline answers, so a fresh checkout serves with no credentials.

It is a demo, not a model (what it answers: `demo_answer`), but every body it sends is
OpenAI-shaped and spec-valid, stream and not: chat with tool calls, structured output,
`n` and log probabilities; completions; embeddings of text or token arrays, derived
from a hash of the input.
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
from ..errors import InvalidRequest
from ..hookspecs import hookimpl
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, Call, ModelInfo, Reply, Target, Usage
from ..upstream.provider import Provider, RegisterProvider
from ..upstream.sse import DONE, event
from .demo_answer import (
    Choice,
    choice_count,
    completion_logprobs,
    count_tokens,
    max_tokens,
    plan_chat,
    text_of,
    token_logprobs,
    top_count,
    words,
)

MODELS = ("demo-chat", "demo-embed")


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
            return self._chat(call, target, body)
        if call.endpoint == COMPLETIONS:
            return self._completions(call, target, body)
        return await super().send(call, target)

    async def _pause(self) -> None:
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)

    # -------------------------------------------------------------- chat

    def _chat(self, call: Call, target: Target, body: dict[str, Any]) -> Reply:
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        prompt = " ".join(text_of(m.get("content")) for m in messages)
        rid = "chatcmpl-demo" + hashlib.sha256(orjson.dumps(messages)).hexdigest()[:20]
        top = _chat_logprobs(body)
        choices = plan_chat(body, rid)
        usage = Usage(count_tokens(prompt), sum(_output_tokens(c) for c in choices))
        call.usage = usage
        if call.stream:
            return Reply(
                stream=self._chat_stream(call, target, rid, choices, top, usage), content_type="text/event-stream"
            )
        out = _envelope(rid, "chat.completion", target, [_chat_choice(c, top) for c in choices], usage=_usage(usage))
        return Reply(body=orjson.dumps(out))

    async def _chat_stream(
        self, call: Call, target: Target, rid: str, choices: list[Choice], top: int | None, usage: Usage
    ) -> AsyncGenerator[bytes, None]:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return event(_envelope(rid, "chat.completion.chunk", target, choices, created, **extra))

        def delta(c: Choice, content: dict[str, Any], finish: str | None = None, token: str | None = None) -> bytes:
            logprobs = None
            if top is not None and token is not None:
                logprobs = {"content": token_logprobs([token], top), "refusal": None}
            return chunk([{"index": c.index, "delta": content, "logprobs": logprobs, "finish_reason": finish}])

        for c in choices:
            yield delta(c, {"role": "assistant", "content": "" if c.content is not None else None})
            for i, call_ in enumerate(c.tool_calls):
                yield delta(c, {"tool_calls": [{"index": i, **call_.to_dict()}]})
            for token in c.tokens:
                await self._pause()
                yield delta(c, {"content": token}, token=token)
            yield delta(c, {}, c.finish_reason)
        if call.include_usage:
            yield chunk([], usage=_usage(usage))
        yield DONE

    # -------------------------------------------------------------- completions

    def _completions(self, call: Call, target: Target, body: dict[str, Any]) -> Reply:
        prompts = _prompts(body.get("prompt"))
        n = choice_count(body)
        limit = max_tokens(body)
        top = None if body.get("logprobs") is None else top_count(body, "logprobs", 5)
        choices: list[dict[str, Any]] = []
        for p, prompt in enumerate(prompts):
            answer = f"This is relaygate's demo provider. You said: {prompt}".strip()
            for j in range(n):
                text = answer if j == 0 else f"{answer} (answer {j + 1})"
                tokens = words(text)
                finish = "stop"
                if limit is not None and len(tokens) > limit:
                    tokens, finish = tokens[:limit], "length"
                logprobs = completion_logprobs(tokens, top) if top is not None else None
                choices.append(
                    {"index": p * n + j, "text": "".join(tokens), "logprobs": logprobs, "finish_reason": finish}
                )
        usage = Usage(sum(count_tokens(p) for p in prompts), sum(count_tokens(c["text"]) for c in choices))
        call.usage = usage
        rid = "cmpl-demo" + hashlib.sha256(orjson.dumps(prompts)).hexdigest()[:20]
        if call.stream:
            return Reply(
                stream=self._completion_stream(call, target, rid, choices, top, usage), content_type="text/event-stream"
            )
        out = _envelope(rid, "text_completion", target, choices, usage=_usage(usage))
        return Reply(body=orjson.dumps(out))

    async def _completion_stream(
        self, call: Call, target: Target, rid: str, choices: list[dict[str, Any]], top: int | None, usage: Usage
    ) -> AsyncGenerator[bytes, None]:
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return event(_envelope(rid, "text_completion", target, choices, created, **extra))

        for c in choices:
            offset = 0
            for token in words(c["text"]) if c["text"] else []:
                await self._pause()
                logprobs = completion_logprobs([token], top, offset) if top is not None else None
                offset += len(token)
                yield chunk([{"index": c["index"], "text": token, "logprobs": logprobs, "finish_reason": None}])
            yield chunk([{"index": c["index"], "text": "", "logprobs": None, "finish_reason": c["finish_reason"]}])
        if call.include_usage:
            yield chunk([], usage=_usage(usage))
        yield DONE

    # -------------------------------------------------------------- embeddings

    def _embeddings(self, call: Call, target: Target, body: dict[str, Any]) -> Reply:
        inputs = _embedding_inputs(body.get("input"))
        requested = body.get("dimensions")
        dims: int = requested if isinstance(requested, int) and requested > 0 else self.dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(inputs):
            vector = _vector(orjson.dumps(item), dims)
            value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_tokens(t) if isinstance(t, str) else len(t) for t in inputs)
        call.usage = Usage(tokens, 0)
        out = {
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Reply(body=orjson.dumps(out))


# ---------------------------------------------------------------- helpers


def _envelope(
    rid: str, kind: str, target: Target, choices: list[dict[str, Any]], created: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A response (or chunk) body around its choices."""
    created = int(time.time()) if created is None else created
    return {"id": rid, "object": kind, "created": created, "model": target.model, "choices": choices, **extra}


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives per token to report, or None when `logprobs` is off."""
    if body.get("logprobs") is True:
        return top_count(body)
    if body.get("top_logprobs") is not None:
        raise InvalidRequest(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs", code="invalid_value"
        )
    return None


def _chat_choice(c: Choice, top: int | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": None}
    if c.tool_calls:
        message["tool_calls"] = [t.to_dict() for t in c.tool_calls]
    logprobs = {"content": token_logprobs(c.tokens, top), "refusal": None} if top is not None else None
    return {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason}


def _output_tokens(c: Choice) -> int:
    return len(c.tokens) + sum(count_tokens(t.arguments) for t in c.tool_calls)


def _prompts(raw: Any) -> list[str]:
    """Legacy completions' `prompt`: a string, strings, a token array or token arrays."""
    if raw is None or isinstance(raw, str):
        return [raw or ""]
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        return raw or [""]
    if isinstance(raw, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [" ".join(map(str, raw))]
    if isinstance(raw, list) and all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in raw):
        return [" ".join(map(str, p)) for p in raw] or [""]
    raise InvalidRequest(
        "Invalid 'prompt': expected a string, strings, or token arrays.", param="prompt", code="invalid_type"
    )


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    """`input` as OpenAI takes it: a string, strings, one token array, or token arrays."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return list(raw)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            return [list(raw)]  # one flat token array is one input
        if all(
            isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw
        ):
            return [list(x) for x in raw]
    raise InvalidRequest(
        "Invalid 'input': expected a string, an array of strings, an array of integers (tokens), "
        "or an array of such arrays.",
        param="input",
        code="invalid_type",
    )


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


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("demo", DemoProvider)
