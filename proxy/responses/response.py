"""Chat answers → the `Response` object: the echoed request, output items, status, usage.

The echo follows OpenAI: what the request set, else OpenAI's defaults, and every field
the spec marks required present (null where it has no value).
"""

from __future__ import annotations

import time
from typing import Any

from .ids import item_id
from .items import seal_reasoning

_DEFAULT_TEXT = {"format": {"type": "text"}, "verbosity": "medium"}


def _echo_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            echoed = {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
                      "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}  # fmt: skip
            out.append(echoed)
        elif isinstance(tool, dict):
            out.append(tool)
    return out


def envelope(body: dict[str, Any], response_id: str, model: str) -> dict[str, Any]:
    """The response's fields that do not depend on the answer (status in_progress)."""
    text = body.get("text")
    if isinstance(text, dict):
        text = {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"}
    else:
        text = _DEFAULT_TEXT
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        reasoning = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    else:
        reasoning = {"effort": None, "summary": None}
    out: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": reasoning,
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": body["temperature"] if body.get("temperature") is not None else 1.0,
        "text": text,
        "tool_choice": body["tool_choice"] if body.get("tool_choice") is not None else "auto",
        "tools": _echo_tools(body.get("tools")),
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": body["top_p"] if body.get("top_p") is not None else 1.0,
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }
    if isinstance(body.get("user"), str):
        out["user"] = body["user"]
    return out


def usage_of(usage: Any) -> dict[str, Any] | None:
    """The Responses usage object for a chat usage object."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": completion_details.get("reasoning_tokens") or 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def finish(response: dict[str, Any], finish_reason: Any) -> None:
    """Status, incomplete details and completion time for how the answer ended."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())


def reasoning_item(response_id: str, index: int, text: str, signature: str | None, redacted: list[str],
                   status: str = "completed") -> dict[str, Any]:  # fmt: skip
    """A reasoning item; its encrypted content is kept (the store needs it) and shown only when asked for."""
    return {
        "id": item_id("rs", response_id, index),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
        "encrypted_content": seal_reasoning(text, signature, redacted),
        "status": status,
    }


def message_item(response_id: str, index: int, text: str | None, refusal: str | None,
                 status: str = "completed") -> dict[str, Any]:  # fmt: skip
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text or "", "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id("msg", response_id, index), "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def call_item(response_id: str, index: int, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"id": item_id("fc", response_id, index), "type": "function_call", "status": status,
            "call_id": call.get("id") or item_id("call", response_id, index), "name": fn.get("name") or "",
            "arguments": fn.get("arguments") or ""}  # fmt: skip


def reasoning_of(message: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    """(text, signature, redacted) of a chat message or delta, in the fields providers use."""
    text = message.get("reasoning_content")
    if not isinstance(text, str):
        text = message.get("reasoning")
    redacted = message.get("reasoning_redacted")
    signature = message.get("reasoning_signature")
    return (
        text if isinstance(text, str) else "",
        signature if isinstance(signature, str) else None,
        [r for r in redacted if isinstance(r, str)] if isinstance(redacted, list) else [],
    )


def from_chat(data: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Fill `response` (an envelope) from a `chat.completion` body."""
    rid = response["id"]
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    incomplete = finish_reason in ("length", "content_filter")
    output: list[dict[str, Any]] = []
    text, signature, redacted = reasoning_of(message)
    if text or signature or redacted:
        output.append(reasoning_item(rid, len(output), text, signature, redacted))
    content = message.get("content")
    refusal = message.get("refusal")
    calls = message.get("tool_calls") or []
    if isinstance(content, list):  # some servers answer with parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content or refusal or not calls:
        status = "incomplete" if incomplete else "completed"
        output.append(message_item(rid, len(output), content if isinstance(content, str) else None,
                                   refusal if isinstance(refusal, str) else None, status))  # fmt: skip
    for call in calls:
        if isinstance(call, dict):
            output.append(call_item(rid, len(output), call))
    response["output"] = output
    if isinstance(data.get("model"), str) and data["model"]:
        response["model"] = data["model"]
    usage = usage_of(data.get("usage"))
    if usage is not None:
        response["usage"] = usage
    finish(response, finish_reason)
    return response


def for_client(response: dict[str, Any], include_encrypted: bool) -> dict[str, Any]:
    """What the client sees: reasoning's encrypted content only where `include` asked for it."""
    if include_encrypted or not any(item["type"] == "reasoning" for item in response["output"]):
        return response
    output = [
        {**item, "encrypted_content": None} if item["type"] == "reasoning" else item for item in response["output"]
    ]
    return {**response, "output": output}
