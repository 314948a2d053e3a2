"""Bedrock Converse response → OpenAI chat completion (and the shared usage/finish maps).

Reasoning travels as `message.reasoning_content` (the field DeepSeek and vLLM use), with
`reasoning_signature` / `reasoning_redacted` so a client can send the assistant message
back unchanged in a multi-turn tool loop with Claude thinking.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from proxy.types import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def usage_of(raw: Any) -> tuple[dict[str, Any], Usage]:
    """OpenAI usage (cache reads as `cached_tokens`) and the log's `Usage`.

    Bedrock's `inputTokens` leaves out cache reads and writes; OpenAI's `prompt_tokens`
    counts every prompt token, so they are added back.
    """
    raw = raw if isinstance(raw, dict) else {}
    fresh = raw.get("inputTokens") or 0
    cache_read = raw.get("cacheReadInputTokens") or 0
    cache_write = raw.get("cacheWriteInputTokens") or 0
    prompt = fresh + cache_read + cache_write
    completion = raw.get("outputTokens") or 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }
    return usage, Usage(prompt, completion, cache_read)


def message_of(content: Any) -> dict[str, Any]:
    """The assistant message for Converse output content blocks."""
    texts: list[str] = []
    reasoning: list[str] = []
    signature: str | None = None
    redacted: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            tool_calls.append(
                {
                    "id": use.get("toolUseId", ""),
                    "type": "function",
                    "function": {"name": use.get("name", ""), "arguments": orjson.dumps(use.get("input", {})).decode()},
                }
            )
        elif "reasoningContent" in block:
            rc = block["reasoningContent"]
            text_block = rc.get("reasoningText")
            if isinstance(text_block, dict):
                reasoning.append(text_block.get("text", ""))
                signature = text_block.get("signature") or signature
            if isinstance(rc.get("redactedContent"), str):
                redacted.append(rc["redactedContent"])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if signature:
        message["reasoning_signature"] = signature
    if redacted:
        message["reasoning_redacted"] = redacted
    return message


def chat_completion(data: dict[str, Any], model: str) -> tuple[bytes, Usage]:
    """The OpenAI `chat.completion` body for a Converse response, and its usage."""
    output = data.get("output")
    msg = output.get("message") if isinstance(output, dict) else None
    message = message_of(msg.get("content") if isinstance(msg, dict) else None)
    usage, log_usage = usage_of(data.get("usage"))
    out = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(data.get("stopReason")),
            }
        ],
        "usage": usage,
    }
    return orjson.dumps(out), log_usage
