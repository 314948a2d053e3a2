"""Input items: normalised for the store and `input_items`, then turned into chat messages.

Normalised items are the spec's item resources (each with an id and a status), so a
listing is valid as it is and a chained request continues from exactly what was stored.
Turning items into chat messages groups an assistant turn (reasoning, message text,
function calls) into one assistant message; reasoning goes back to the provider in the
chat shape the Bedrock plugin defines (`reasoning_content`, `reasoning_signature`,
`reasoning_redacted`) when it carries what the provider signed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from .fields import bad, type_error
from .ids import INPUT_BASE, item_id

ENCRYPTED_PREFIX = "rgr1."  # relaygate's own reasoning payload; anything else came from another API
_IMAGE_DETAILS = ("auto", "low", "high")


# ---------------------------------------------------------------- reasoning payloads


def seal_reasoning(text: str, signature: str | None, redacted: list[str]) -> str:
    """What a reasoning item's `encrypted_content` carries: the exact text and its signature.

    Not a secret (the text is the item's summary too), but opaque to clients; the provider
    checks the signature, so a changed text is refused upstream.
    """
    payload: dict[str, Any] = {"text": text}
    if signature:
        payload["signature"] = signature
    if redacted:
        payload["redacted"] = redacted
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).decode()


def open_reasoning(sealed: Any) -> dict[str, Any] | None:
    """The payload of one of our `encrypted_content` strings; None for anything else."""
    if not isinstance(sealed, str) or not sealed.startswith(ENCRYPTED_PREFIX):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(sealed[len(ENCRYPTED_PREFIX) :]))
    except (binascii.Error, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("text"), str) else None


# ---------------------------------------------------------------- normalising


def _input_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise type_error(f"{param}.text", "a string", text)
        return {"type": "input_text", "text": text}
    if kind == "input_image":
        out = {"type": "input_image", "detail": part.get("detail") or "auto"}
        for key in ("image_url", "file_id"):
            if part.get(key) is not None:
                out[key] = part[key]
        return out
    if kind == "input_file":
        return {k: v for k, v in part.items() if v is not None}
    raise bad(f"Invalid content part type {kind!r} at '{param}'; expected input_text, input_image or input_file.",
              param)  # fmt: skip


def _output_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("output_text", "input_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise type_error(f"{param}.text", "a string", text)
        return {"type": "output_text", "text": text, "annotations": part.get("annotations") or [],
                "logprobs": part.get("logprobs") or []}  # fmt: skip
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    raise bad(f"Invalid content part type {kind!r} at '{param}' of an assistant message; expected output_text.",
              param)  # fmt: skip


def _message(item: dict[str, Any], param: str, new_id: str) -> dict[str, Any]:
    role = item.get("role")
    content = item.get("content")
    if role not in ("user", "system", "developer", "assistant"):
        raise bad(f"Invalid value for '{param}.role': {role!r}; expected user, assistant, system or developer.",
                  f"{param}.role")  # fmt: skip
    if isinstance(content, str):
        parts: list[Any] = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise type_error(f"{param}.content", "a string or an array of content parts", content)
    convert = _output_part if role == "assistant" else _input_part
    out: dict[str, Any] = {
        "id": item.get("id") or new_id,
        "type": "message",
        "role": role,
        "status": item.get("status") or "completed",
        "content": [convert(p, f"{param}.content[{j}]") for j, p in enumerate(parts)],
    }
    return out


def normalize(raw: Any, response_id: str) -> list[dict[str, Any]]:
    """The request's `input` as item resources with ids (ours where the client gave none)."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise type_error("input", "a string or an array of input items", raw)
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise type_error(param, "an object", item)
        kind = item.get("type") or ("message" if "role" in item else None)
        n = INPUT_BASE + i
        if kind == "message":
            items.append(_message(item, param, item_id("msg", response_id, n)))
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise type_error(f"{param}.{key}", "a string", item.get(key))
            items.append({"id": item.get("id") or item_id("fc", response_id, n), "type": "function_call",
                          "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"],
                          "status": item.get("status") or "completed"})  # fmt: skip
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise type_error(f"{param}.call_id", "a string", item.get("call_id"))
            output = item.get("output")
            if not isinstance(output, (str, list)):
                raise type_error(f"{param}.output", "a string or an array", output)
            items.append({"id": item.get("id") or item_id("fco", response_id, n), "type": "function_call_output",
                          "call_id": item["call_id"], "output": output,
                          "status": item.get("status") or "completed"})  # fmt: skip
        elif kind == "reasoning":
            if not isinstance(item.get("id"), str):
                raise type_error(f"{param}.id", "a string", item.get("id"))
            summary = item.get("summary")
            if not isinstance(summary, list):
                raise type_error(f"{param}.summary", "an array", summary)
            out = {"id": item["id"], "type": "reasoning", "summary": summary}
            if item.get("encrypted_content") is not None:
                out["encrypted_content"] = item["encrypted_content"]
            if item.get("content"):
                out["content"] = item["content"]
            items.append(out)
        elif kind == "item_reference":
            if not isinstance(item.get("id"), str):
                raise type_error(f"{param}.id", "a string", item.get("id"))
            items.append({"type": "item_reference", "id": item["id"]})
        else:
            raise bad(
                f"Invalid input item type {kind!r} at '{param}': translated providers take message, function_call, "
                "function_call_output, reasoning and item_reference items.",
                f"{param}.type",
            )
    return items


# ---------------------------------------------------------------- items -> chat messages


def _user_content(item: dict[str, Any], param: str) -> str | list[dict[str, Any]]:
    parts = item["content"]
    if len(parts) == 1 and parts[0]["type"] == "input_text":
        return str(parts[0]["text"])
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        where = f"{param}.content[{j}]"
        kind = part["type"]
        if kind == "input_text":
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise bad(f"Invalid '{where}': translated providers take images as image_url (an http(s) or data: "
                          "URL), not file_id.", where, "unsupported_parameter")  # fmt: skip
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in _IMAGE_DETAILS:
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            if part.get("file_url") is not None:
                raise bad(f"Invalid '{where}': file_url is not available on translated providers; send file_data.",
                          where, "unsupported_parameter")  # fmt: skip
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k) is not None}
            out.append({"type": "file", "file": file})
    return out


def _text_only(item: dict[str, Any], param: str) -> str:
    texts = []
    for j, part in enumerate(item["content"]):
        if part["type"] not in ("input_text", "output_text"):
            raise bad(f"Invalid '{param}.content[{j}]': a {item['role']} message takes text only.",
                      f"{param}.content[{j}]")  # fmt: skip
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_output(output: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    parts = []
    for j, part in enumerate(output):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text") or not isinstance(part.get("text"), str):
            raise bad(f"Invalid '{param}.output[{j}]': translated providers take text tool output only.",
                      f"{param}.output[{j}]", "unsupported_parameter")  # fmt: skip
        parts.append({"type": "text", "text": part["text"]})
    return parts


class _Turn:
    """One assistant turn being gathered from consecutive items."""

    __slots__ = ("redacted", "signature", "texts", "thinking", "tool_calls")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.thinking: list[str] = []
        self.signature: str | None = None
        self.redacted: list[str] = []

    @property
    def has_answer(self) -> bool:
        return bool(self.texts or self.tool_calls)

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(self.texts) if self.texts else None}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        # Only what the provider signed goes back: an unsigned thought is nobody's business
        # upstream, and some servers refuse reasoning in their input.
        if self.signature or self.redacted:
            if self.thinking:
                msg["reasoning_content"] = "".join(self.thinking)
            if self.signature:
                msg["reasoning_signature"] = self.signature
            if self.redacted:
                msg["reasoning_redacted"] = self.redacted
        return msg


def to_messages(items: list[dict[str, Any]], instructions: str | None, first_input: int = 0) -> list[dict[str, Any]]:
    """Chat messages for normalised, resolved items (item references already replaced).

    Items before `first_input` came from the stored conversation (`previous_response_id`).
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    turn: _Turn | None = None

    def flush() -> None:
        nonlocal turn
        if turn is not None and (turn.has_answer or turn.signature or turn.redacted):
            messages.append(turn.message())
        turn = None

    for i, item in enumerate(items):
        param = f"input[{i - first_input}]" if i >= first_input else "previous_response_id"
        kind = item["type"]
        if kind == "message" and item["role"] != "assistant":
            flush()
            if item["role"] == "user":
                messages.append({"role": "user", "content": _user_content(item, param)})
            else:  # system and developer: "system" is what every chat provider takes
                messages.append({"role": "system", "content": _text_only(item, param)})
            continue
        if kind == "function_call_output":
            flush()
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _tool_output(item["output"], param)})  # fmt: skip
            continue
        if kind == "reasoning" and turn is not None and turn.has_answer:
            flush()  # a new thought starts a new turn
        if turn is None:
            turn = _Turn()
        if kind == "message":
            text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
            if text:
                turn.texts.append(text)
        elif kind == "function_call":
            turn.tool_calls.append({"id": item["call_id"], "type": "function",
                                    "function": {"name": item["name"], "arguments": item["arguments"] or "{}"}})
        elif kind == "reasoning":
            payload = open_reasoning(item.get("encrypted_content"))
            if payload is not None:
                turn.thinking.append(payload["text"])
                turn.signature = payload.get("signature") or turn.signature
                turn.redacted.extend(payload.get("redacted") or ())
    flush()
    return messages
