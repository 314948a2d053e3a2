"""ConverseStream events → OpenAI `chat.completion.chunk` SSE events.

Per event the cost is one `orjson.loads` of the payload and one `orjson.dumps` of the
small delta: the constant part of every chunk (id, created, model) is rendered to bytes
once per stream, and the delta is spliced in between a prefix and a suffix.

Tool calls are numbered among tool calls (`index` 0, 1, ...), not by Bedrock's content
block index, which also counts text and reasoning blocks.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.errors import UpstreamError
from proxy.types import Usage

from .response_map import completion_id, finish_reason, usage_of

_SUFFIX = b',"logprobs":null,"finish_reason":null}]}\n\n'


class ChatStreamMapper:
    """State for one stream; `event()` returns the SSE bytes for one Bedrock event (or b"")."""

    __slots__ = ("_head", "_started", "_tools", "created", "finish", "include_usage", "model", "rid", "usage")

    def __init__(self, model: str, include_usage: bool) -> None:
        self.rid = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._head = (
            b'data: {"id":"' + self.rid.encode() + b'","object":"chat.completion.chunk","created":'
            + str(self.created).encode() + b',"model":' + orjson.dumps(model)
        )
        self._tools: dict[int, int] = {}  # Bedrock content block index → tool call index
        self.finish: str | None = None
        self.usage: Usage | None = None
        self._started = False

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._head + b',"choices":[{"index":0,"delta":' + orjson.dumps(delta) + _SUFFIX

    def start(self) -> bytes:
        """The first chunk: the assistant role (sent once, even if messageStart is missing)."""
        self._started = True
        return self._delta({"role": "assistant", "content": ""})

    def event(self, kind: str, payload: bytes) -> bytes:
        data = orjson.loads(payload) if payload else {}
        if kind == "contentBlockDelta":
            delta = data.get("delta") or {}
            if "text" in delta:
                return self._delta({"content": delta["text"]})
            if "toolUse" in delta:
                index = self._tools.get(data.get("contentBlockIndex", -1))
                if index is None:  # a delta with no start: number it now
                    index = self._tools[data.get("contentBlockIndex", -1)] = len(self._tools)
                args = delta["toolUse"].get("input", "")
                return self._delta({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
            if "reasoningContent" in delta:
                rc = delta["reasoningContent"]
                if "text" in rc:
                    return self._delta({"reasoning_content": rc["text"]})
                if "signature" in rc:
                    return self._delta({"reasoning_signature": rc["signature"]})
                if "redactedContent" in rc:
                    return self._delta({"reasoning_redacted": [rc["redactedContent"]]})
            return b""
        if kind == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if not use:
                return b""
            index = self._tools[data.get("contentBlockIndex", -1)] = len(self._tools)
            call = {"index": index, "id": use.get("toolUseId", ""), "type": "function",
                    "function": {"name": use.get("name", ""), "arguments": ""}}
            return self._delta({"tool_calls": [call]})
        if kind == "messageStart":
            return b"" if self._started else self.start()
        if kind == "messageStop":
            self.finish = finish_reason(data.get("stopReason"))
            return (self._head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
                    + self.finish.encode() + b'"}]}\n\n')
        if kind == "metadata":
            usage, self.usage = usage_of(data.get("usage"))
            if self.include_usage:
                return self._head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
            return b""
        return b""  # contentBlockStop and events we do not know

    def check_complete(self) -> None:
        if self.finish is None:
            raise UpstreamError("Bedrock's stream ended before the message was complete.", code="incomplete_stream")
