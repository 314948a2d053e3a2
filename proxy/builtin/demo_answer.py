"""What the demo provider answers: enough like a model for a new user's first five minutes.

It echoes the last user message, calls a tool when asked to (by `tool_choice`, or when
`tool_choice` is `auto` and the last user message names a tool or asks for one), fills
tool arguments and `json_schema` output with values valid for their schema, honours `n`,
`max_tokens` / `max_completion_tokens` and reports log probabilities when asked. Every
answer is deterministic: the same request gets the same answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest
from .demo_schema import instance

_ASKS_FOR_A_TOOL = re.compile(r"\b(use|call|run|invoke)\b.{0,20}\btools?\b|\btool call\b", re.IGNORECASE)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, valid for the tool's parameters

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class Choice:
    index: int
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def tokens(self) -> list[str]:
        return words(self.content) if self.content else []


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def words(text: str) -> list[str]:
    """The answer cut into tokens as a stream sends them: `["This", " is", ...]`."""
    parts = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(parts)]


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def choice_count(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not 1 <= n <= 128:
        raise InvalidRequest(f"Invalid 'n': {n}. Expected a value between 1 and 128.", param="n", code="invalid_value")
    return int(n)


def max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise InvalidRequest(f"Invalid '{key}': expected a value >= 1.", param=key, code="invalid_value")
            return value
    return None


def _cut(text: str, limit: int | None) -> tuple[str, str]:
    """`text` within `limit` tokens, and the finish reason that says whether it was cut."""
    tokens = words(text)
    if limit is None or len(tokens) <= limit:
        return text, "stop"
    return "".join(tokens[:limit]), "length"


# ---------------------------------------------------------------- chat


def plan_chat(body: dict[str, Any], rid: str) -> list[Choice]:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    user_text = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    limit = max_tokens(body)
    tools = _function_tools(body)
    choices = []
    for i in range(choice_count(body)):
        calls = _tool_calls(body, tools, last, user_text, f"{rid}-{i}") if tools else []
        if calls:
            choices.append(Choice(i, None, calls, "tool_calls"))
            continue
        if last.get("role") == "tool":
            answer = f"The tool answered: {text_of(last.get('content'))}"
        else:
            answer = f"This is relaygate's demo provider. You said: {user_text}".strip()
        answer = _formatted(body, answer, user_text)
        if i:
            answer = answer if body.get("response_format") else f"{answer} (answer {i + 1})"
        content, finish = (answer, "stop") if body.get("response_format") else _cut(answer, limit)
        choices.append(Choice(i, content, [], finish))
    return choices


def _function_tools(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tools: dict[str, dict[str, Any]] = {}
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            tools[fn["name"]] = fn
    return tools


def _tool_calls(
    body: dict[str, Any], tools: dict[str, dict[str, Any]], last: dict[str, Any], user_text: str, seed: str
) -> list[ToolCall]:
    choice = body.get("tool_choice")
    names: list[str] = []
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        names = [name] if name in tools else []
    elif choice == "required":
        names = _named(tools, user_text)[:1] or [next(iter(tools))]
    elif choice in (None, "auto") and last.get("role") == "user":
        # A model calls a tool when the user asks it to: by the tool's name, or for "a tool".
        names = _named(tools, user_text)
        if not names and _ASKS_FOR_A_TOOL.search(user_text):
            names = [next(iter(tools))]
        if body.get("parallel_tool_calls") is False:
            names = names[:1]
    calls = []
    for i, name in enumerate(names):
        args = instance(tools[name].get("parameters") or {"type": "object"}, "demo")
        call_id = "call_" + hashlib.sha256(f"{seed}-{i}-{name}".encode()).hexdigest()[:24]
        calls.append(ToolCall(call_id, name, orjson.dumps(args).decode()))
    return calls


def _named(tools: dict[str, dict[str, Any]], text: str) -> list[str]:
    """The tools the text names (`get_weather`, or "get weather"), in the order given."""
    lowered = text.lower()
    return [
        name for name in tools if name.lower() in lowered or re.sub(r"[_\-]+", " ", name.lower()).strip() in lowered
    ]


def _formatted(body: dict[str, Any], answer: str, user_text: str) -> str:
    """`answer`, or JSON in the shape `response_format` asks for."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return answer
    if fmt.get("type") == "json_schema":
        raw_spec = fmt.get("json_schema")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        return orjson.dumps(instance(spec.get("schema") or {"type": "object"}, "demo")).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": answer, "you_said": user_text}).decode()
    return answer


# ---------------------------------------------------------------- log probabilities


def _logprob(token: str, rank: int) -> float:
    digest = hashlib.sha256(f"{rank}:{token}".encode()).digest()
    return -round(rank * 1.5 + digest[0] / 255, 4)


def top_count(body: dict[str, Any], key: str = "top_logprobs", most: int = 20) -> int:
    value = body.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise InvalidRequest(
            f"Invalid '{key}': expected an integer between 0 and {most}.", param=key, code="invalid_value"
        )
    return value


def token_logprobs(tokens: list[str], top: int) -> list[dict[str, Any]]:
    """Chat `logprobs.content`: one entry per token, with `top` alternatives each."""

    def entry(token: str, rank: int) -> dict[str, Any]:
        return {"token": token, "logprob": _logprob(token, rank), "bytes": list(token.encode())}

    out = []
    for token in tokens:
        alternatives = [entry(token, 0)] + [entry(f"{token.strip() or token}{r}", r) for r in range(1, top)]
        out.append({**entry(token, 0), "top_logprobs": alternatives[:top]})
    return out


def completion_logprobs(tokens: list[str], top: int, offset: int = 0) -> dict[str, Any]:
    """Legacy completions `logprobs`: parallel lists, as OpenAI sends them."""
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [_logprob(t, 0) for t in tokens],
        "top_logprobs": [
            {t: _logprob(t, 0), **{f"{t.strip()}{r}": _logprob(t, r) for r in range(1, top)}} for t in tokens
        ],
        "text_offset": offsets,
    }
