"""Azure's streaming quirks, made invisible to OpenAI clients.

Azure OpenAI opens a stream with a chunk that has no choices and a blank id, model and
object, carrying only `prompt_filter_results`; clients that read `chunk.choices[0]`
break on it. With the asynchronous content filter it also sends annotation chunks with
a blank id/object whose choices carry `content_filter_results` but no `delta`.

`AzureStreamFixer` is the per-request `stream_filter`: it drops the prompt-filter chunk
(`prompt_filter_results: drop`, the default) or moves its `prompt_filter_results` onto
the next chunk that has choices (`merge`), and completes annotation chunks (id, model,
object, created from the stream, `delta: {}`, `finish_reason: null`) so every chunk is a
valid `chat.completion.chunk`. `content_filter_results` and `finish_reason:
"content_filter"` are kept as Azure sent them.

Only events that carry one of the quirks' markers are parsed (plus the first ordinary
chunk, once, to learn the stream's id); every other block passes through as bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.upstream.sse import event, event_data, split_events

_PROMPT_FILTER = b'"prompt_filter_results"'
_BLANK_OBJECT = (b'"object":""', b'"object": ""')
_META_KEYS = ("id", "created", "model", "system_fingerprint")


def _has_marker(data: bytes) -> bool:
    return _PROMPT_FILTER in data or _BLANK_OBJECT[0] in data or _BLANK_OBJECT[1] in data


class AzureStreamFixer:
    """Callable on each block of whole SSE events; one instance per stream."""

    def __init__(self, *, merge: bool, object_name: str) -> None:
        self.merge = merge
        self.object_name = object_name  # "chat.completion.chunk" or "text_completion"
        self.meta: dict[str, Any] | None = None  # id/created/model of the stream's real chunks
        self.pending: list[Any] | None = None  # prompt_filter_results waiting for a chunk

    def __call__(self, block: bytes) -> bytes:
        if self.meta is not None and self.pending is None and not _has_marker(block):
            return block
        return b"".join(self._event(ev) for ev in split_events(block))

    def _event(self, ev: bytes) -> bytes:
        marked = _has_marker(ev)
        if not marked and self.meta is not None and self.pending is None:
            return ev
        data = event_data(ev)
        if data is None or data == b"[DONE]":
            return ev
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return ev
        if not isinstance(chunk, dict) or "error" in chunk:
            return ev
        choices = chunk.get("choices")
        blank = not chunk.get("object") or not chunk.get("id")

        if blank and not choices and "usage" not in chunk:
            # The prompt-filter chunk (or an empty annotation): nothing a client can read.
            results = chunk.get("prompt_filter_results")
            if self.merge and isinstance(results, list):
                self.pending = [*(self.pending or ()), *results]
            return b""

        changed = False
        if blank:
            changed = self._complete(chunk)
        elif self.meta is None:
            self.meta = {k: chunk[k] for k in _META_KEYS if k in chunk}
        if self.pending is not None and choices:
            chunk["prompt_filter_results"] = self.pending
            self.pending = None
            changed = True
        return event(chunk) if changed else ev

    def _complete(self, chunk: dict[str, Any]) -> bool:
        """Give an annotation chunk the stream's identity and the fields the spec requires."""
        meta = self.meta or {}
        chunk["id"] = chunk.get("id") or meta.get("id") or ""
        chunk["object"] = self.object_name
        chunk["model"] = chunk.get("model") or meta.get("model") or ""
        if not chunk.get("created"):
            chunk["created"] = meta.get("created", 0)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if self.object_name == "chat.completion.chunk":
                choice.setdefault("delta", {})
            else:
                choice.setdefault("text", "")
            choice.setdefault("finish_reason", None)
            choice.setdefault("index", 0)
        return True
