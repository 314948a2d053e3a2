"""A chat completion stream → the Responses API's event stream.

The event order is the spec's: `response.created`, `response.in_progress`, then per output
item `output_item.added` … its deltas … `output_item.done`, and `response.completed` (or
`response.incomplete`). `sequence_number` starts at 0 and grows by one per event. A
failure after the first event ends the stream with the spec's `error` event.

Per upstream chunk the cost is one `orjson.loads`; a text or argument delta is rendered
from bytes prepared once per item, with one `orjson.dumps` of the delta string.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError
from ..types import Call, Usage
from .ids import item_id
from .response import call_item, finish, for_client, message_item, reasoning_item, reasoning_of, usage_of

log = logging.getLogger("relaygate.responses")

#: Called with the finished response before its last event is sent (to store it).
OnDone = Callable[[dict[str, Any]], Awaitable[None]]


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_event(err: GatewayError, sequence_number: int) -> bytes:
    """The spec's `error` event (ResponseErrorEvent)."""
    payload = {"type": "error", "code": err.code or err.type, "message": err.message, "param": err.param,
               "sequence_number": sequence_number}  # fmt: skip
    return sse("error", payload)


def chat_chunks(block: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a block of whole SSE events (`[DONE]` and comments skipped)."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    out = []
    for ev in block.split(b"\n\n"):
        if not ev:
            continue
        for line in ev.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data and data != b"[DONE]":
                    chunk = orjson.loads(data)
                    if isinstance(chunk, dict):
                        out.append(chunk)
    return out


class _Item:
    """One output item being streamed."""

    __slots__ = ("data", "delta_head", "index", "kind", "parts", "text", "tool_index")

    def __init__(self, kind: str, index: int, data: dict[str, Any]) -> None:
        self.kind = kind  # message, refusal (a message whose open part is a refusal), reasoning, function_call
        self.index = index
        self.data = data
        self.parts: list[str] = []  # the open part's text, summary text or arguments so far
        self.text = ""  # a refusal's message: the text part before it, closed
        self.delta_head = b""
        self.tool_index = -1


class StreamTranslator:
    """State of one translated stream; `run` is the generator the client reads."""

    def __init__(
        self, call: Call, source: Call, response: dict[str, Any], include_encrypted: bool, on_done: OnDone
    ) -> None:
        self.call = call
        self.source = source  # the chat call the provider answers
        self.response = response
        self.include_encrypted = include_encrypted
        self.on_done = on_done
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None  # the open message or reasoning item
        self.tools: dict[int, _Item] = {}  # chat tool call index -> function_call item
        self.signature: str | None = None
        self.redacted: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    # -------------------------------------------------------------- events

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload["type"] = kind
        payload["sequence_number"] = self.seq
        self.seq += 1
        return sse(kind, payload)

    def _snapshot(self, kind: str) -> bytes:
        return self._event(kind, {"response": self._visible(self.response)})

    def _visible(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.include_encrypted:
            return obj
        if obj.get("type") == "reasoning":
            return {**obj, "encrypted_content": None}
        if obj.get("object") == "response" and any(i["type"] == "reasoning" for i in obj["output"]):
            return {**obj, "output": [self._visible(i) for i in obj["output"]]}
        return obj

    def _delta(self, item: _Item, delta: str) -> bytes:
        item.parts.append(delta)
        seq = self.seq
        self.seq += 1
        return item.delta_head + orjson.dumps(delta) + b',"sequence_number":' + str(seq).encode() + b"}\n\n"

    def _add(self, kind: str, data: dict[str, Any], out: list[bytes]) -> _Item:
        item = _Item(kind, len(self.items), data)
        self.items.append(item)
        out.append(self._event("response.output_item.added", {"output_index": item.index, "item": dict(data)}))
        common = b'"item_id":' + orjson.dumps(data["id"]) + b',"output_index":' + str(item.index).encode()
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._event("response.content_part.added",
                                   {"item_id": data["id"], "output_index": item.index, "content_index": 0,
                                    "part": part}))  # fmt: skip
            item.delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                               + common + b',"content_index":0,"logprobs":[],"delta":')  # fmt: skip
        elif kind == "refusal":
            self._open_refusal(item, 0, out)
        elif kind == "reasoning":
            out.append(self._event("response.reasoning_summary_part.added",
                                   {"item_id": data["id"], "output_index": item.index, "summary_index": 0,
                                    "part": {"type": "summary_text", "text": ""}}))  # fmt: skip
            item.delta_head = (b'event: response.reasoning_summary_text.delta\ndata: '
                               b'{"type":"response.reasoning_summary_text.delta",' + common
                               + b',"summary_index":0,"delta":')  # fmt: skip
        else:
            item.delta_head = (b'event: response.function_call_arguments.delta\ndata: '
                               b'{"type":"response.function_call_arguments.delta",' + common + b',"delta":')
        return item

    def _open_refusal(self, item: _Item, content_index: int, out: list[bytes]) -> None:
        """A refusal part in a message item: its own part, streamed as `response.refusal.delta`."""
        item_id_ = item.data["id"]
        out.append(self._event("response.content_part.added",
                               {"item_id": item_id_, "output_index": item.index, "content_index": content_index,
                                "part": {"type": "refusal", "refusal": ""}}))  # fmt: skip
        item.delta_head = (b'event: response.refusal.delta\ndata: {"type":"response.refusal.delta","item_id":'
                           + orjson.dumps(item_id_) + b',"output_index":' + str(item.index).encode()
                           + b',"content_index":' + str(content_index).encode() + b',"delta":')  # fmt: skip

    def _close_text(self, item: _Item, text: str, out: list[bytes]) -> None:
        """The done events of a message's text part (content index 0)."""
        common: dict[str, Any] = {"item_id": item.data["id"], "output_index": item.index, "content_index": 0}
        out.append(self._event("response.output_text.done", {**common, "text": text, "logprobs": []}))
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        out.append(self._event("response.content_part.done", {**common, "part": part}))

    def _open_message(self, kind: str, out: list[bytes]) -> _Item:
        """Close the open item and open a message whose first part is text or a refusal."""
        if self.open is not None:
            self._close(self.open, out)
        data = {"id": item_id("msg", self.response["id"], len(self.items)), "type": "message",
                "status": "in_progress", "role": "assistant", "content": []}  # fmt: skip
        self.open = self._add(kind, data, out)
        return self.open

    def _refuse(self, refusal: str, out: list[bytes]) -> None:
        """A refusal delta: into the open message's refusal part, opened after its text part
        if it has one (the order of a non-stream message's parts)."""
        item = self.open
        if item is None or item.kind not in ("message", "refusal"):
            item = self._open_message("refusal", out)
        elif item.kind == "message":
            item.text = "".join(item.parts)
            self._close_text(item, item.text, out)
            item.parts = []
            item.kind = "refusal"
            self._open_refusal(item, 1, out)
        out.append(self._delta(item, refusal))

    def _close(self, item: _Item, out: list[bytes]) -> None:
        rid = self.response["id"]
        common: dict[str, Any] = {"item_id": item.data["id"], "output_index": item.index}
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        text = "".join(item.parts)
        if item.kind == "message":
            self._close_text(item, text, out)
            item.data = message_item(rid, item.index, text, None, status)
        elif item.kind == "refusal":
            index = 1 if item.text else 0
            out.append(self._event("response.refusal.done", {**common, "content_index": index, "refusal": text}))
            part = {"type": "refusal", "refusal": text}
            out.append(self._event("response.content_part.done", {**common, "content_index": index, "part": part}))
            item.data = message_item(rid, item.index, item.text, text, status)
        elif item.kind == "reasoning":
            out.append(self._event("response.reasoning_summary_text.done",
                                   {**common, "summary_index": 0, "text": text}))  # fmt: skip
            out.append(self._event("response.reasoning_summary_part.done",
                                   {**common, "summary_index": 0, "part": {"type": "summary_text", "text": text}}))
            item.data = reasoning_item(rid, item.index, text, self.signature, self.redacted)
        else:
            name = item.data["name"]
            out.append(self._event("response.function_call_arguments.done",
                                   {**common, "name": name, "arguments": text}))  # fmt: skip
            item.data = {**item.data, "arguments": text, "status": status}
        out.append(self._event("response.output_item.done",
                               {"output_index": item.index, "item": self._visible(item.data)}))  # fmt: skip

    # -------------------------------------------------------------- chunks

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if chunk.get("error") is not None:  # some servers report a failure as a chunk
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(f"The provider failed mid-stream: {message}", code="upstream_error")
        choices = chunk.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content and self.open is not None and self.open.kind == "message" and len(delta) == 1:
            out.append(self._delta(self.open, content))  # the common case: more text
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            return
        rid = self.response["id"]
        text, signature, redacted = reasoning_of(delta)
        if signature:
            self.signature = signature
        if redacted:
            self.redacted.extend(redacted)
        if text or ((signature or redacted) and (self.open is None or self.open.kind != "reasoning")):
            if self.open is None or self.open.kind != "reasoning":
                if self.open is not None:
                    self._close(self.open, out)
                n = len(self.items)
                data = {"id": item_id("rs", rid, n), "type": "reasoning", "summary": []}
                self.open = self._add("reasoning", data, out)
            if text:
                out.append(self._delta(self.open, text))
        if content and isinstance(content, str):
            item = self.open
            if item is None or item.kind != "message":
                item = self._open_message("message", out)
            out.append(self._delta(item, content))
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._refuse(refusal, out)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            index = call.get("index", 0)
            item = self.tools.get(index)
            fn = call.get("function") or {}
            if item is None:
                if self.open is not None:
                    self._close(self.open, out)
                    self.open = None
                n = len(self.items)
                data = call_item(rid, n, call, "in_progress")
                data["arguments"] = ""
                item = self.tools[index] = self._add("function_call", data, out)
            elif fn.get("name") and not item.data["name"]:
                item.data["name"] = fn["name"]
            args = fn.get("arguments")
            if args:
                out.append(self._delta(item, args))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    async def _end(self, out: list[bytes]) -> None:
        if self.finish_reason is None:  # cut off: completing it would pass a partial answer off as whole
            raise UpstreamError("The provider's stream ended before the answer was complete.",
                                code="incomplete_stream")  # fmt: skip
        if self.open is not None:
            self._close(self.open, out)
            self.open = None
        for item in self.tools.values():
            self._close(item, out)
        response = self.response
        response["output"] = [item.data for item in self.items]
        usage = usage_of(self.usage)
        if usage is None and self.source.usage is not None:  # a provider that counted without telling
            u = self.source.usage
            usage = usage_of({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens})
        if usage is not None:
            response["usage"] = usage
            self.call.usage = Usage(usage["input_tokens"], usage["output_tokens"])
        if not self.items:  # an empty answer is still a message
            response["output"] = [message_item(response["id"], 0, "", None)]
        finish(response, self.finish_reason)
        await self.on_done(response)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._snapshot(kind))

    # -------------------------------------------------------------- the stream

    async def run(self, upstream: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """The client's stream. Nothing is yielded before the upstream's first chunk, so a
        provider failing at once still lets the core fall back to the next target."""
        started = False
        try:
            try:
                first = await anext(upstream)
            except StopAsyncIteration:
                first = b""
            chunks = chat_chunks(first)
            model = chunks[0].get("model") if chunks else None
            if isinstance(model, str) and model:
                self.response["model"] = model
            out = [self._snapshot("response.created"), self._snapshot("response.in_progress")]
            for chunk in chunks:
                self._chunk(chunk, out)
            started = True
            yield b"".join(out)
            async for block in upstream:
                out = []
                for chunk in chat_chunks(block):
                    self._chunk(chunk, out)
                if out:
                    yield b"".join(out) if len(out) > 1 else out[0]
            out = []
            await self._end(out)
            yield b"".join(out)
        except (GatewayError, orjson.JSONDecodeError) as exc:
            if not started:
                raise
            err = exc if isinstance(exc, GatewayError) else UpstreamError("The provider sent a malformed stream.")
            self.call.error = err.code or err.type
            self.call.error_type = err.error_type
            log.warning("request %s: stream failed after it started: %s", self.call.request_id, err.message)
            yield error_event(err, self.seq)
        finally:
            await upstream.aclose()


# ---------------------------------------------------------------- replay


_TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def replay(response: dict[str, Any], include_encrypted: bool, starting_after: int = -1) -> bytes:
    """A stored response as the event stream that would have delivered it (one delta per
    part), from the event after `starting_after`: `GET /v1/responses/{id}?stream=true`."""
    shown = for_client(response, include_encrypted)
    events: list[bytes] = []
    seq = 0

    def emit(kind: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        if seq > starting_after:
            events.append(sse(kind, {"type": kind, **payload, "sequence_number": seq}))
        seq += 1

    head = {**shown, "status": "in_progress", "output": [], "incomplete_details": None, "completed_at": None}
    head.pop("usage", None)
    emit("response.created", {"response": head})
    emit("response.in_progress", {"response": head})
    for index, item in enumerate(shown["output"]):
        at = {"item_id": item["id"], "output_index": index}
        kind = item["type"]
        if kind == "message":
            opened = {**item, "status": "in_progress", "content": []}
            emit("response.output_item.added", {"output_index": index, "item": opened})
            for ci, part in enumerate(item["content"]):
                if part["type"] == "refusal":
                    text = part["refusal"]
                    emit("response.content_part.added", {**at, "content_index": ci,
                                                         "part": {"type": "refusal", "refusal": ""}})  # fmt: skip
                    if text:
                        emit("response.refusal.delta", {**at, "content_index": ci, "delta": text})
                    emit("response.refusal.done", {**at, "content_index": ci, "refusal": text})
                else:
                    text = part.get("text", "")
                    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    emit("response.content_part.added", {**at, "content_index": ci, "part": empty})
                    if text:
                        emit("response.output_text.delta", {**at, "content_index": ci, "delta": text, "logprobs": []})
                    emit("response.output_text.done", {**at, "content_index": ci, "text": text, "logprobs": []})
                emit("response.content_part.done", {**at, "content_index": ci, "part": part})
        elif kind == "reasoning":
            opened = {"id": item["id"], "type": "reasoning", "summary": []}
            emit("response.output_item.added", {"output_index": index, "item": opened})
            for si, part in enumerate(item.get("summary") or ()):
                text = part.get("text", "")
                emit("response.reasoning_summary_part.added",
                     {**at, "summary_index": si, "part": {"type": "summary_text", "text": ""}})  # fmt: skip
                if text:
                    emit("response.reasoning_summary_text.delta", {**at, "summary_index": si, "delta": text})
                emit("response.reasoning_summary_text.done", {**at, "summary_index": si, "text": text})
                emit("response.reasoning_summary_part.done", {**at, "summary_index": si, "part": part})
        else:  # function_call
            opened = {**item, "arguments": "", "status": "in_progress"}
            emit("response.output_item.added", {"output_index": index, "item": opened})
            if item["arguments"]:
                emit("response.function_call_arguments.delta", {**at, "delta": item["arguments"]})
            emit("response.function_call_arguments.done", {**at, "name": item["name"], "arguments": item["arguments"]})
        emit("response.output_item.done", {"output_index": index, "item": item})
    emit(_TERMINAL.get(shown["status"], "response.completed"), {"response": shown})
    return b"".join(events)
