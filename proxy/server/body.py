"""Reading and checking a client's request body before it enters the chain.

The body is read once under the size limit and parsed once with orjson; these checks
catch what would otherwise surface as a confusing upstream error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InvalidRequest, PayloadTooLarge
from ..types import CHAT, COMPLETIONS, EMBEDDINGS

_CHUNK = 1 << 16


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, at most `limit` bytes, received within `timeout` seconds.

    A body that has already arrived (the usual case: it came with the headers) is taken
    without a timer; only one still on its way is waited for, under the deadline.
    """
    length = request.content_length
    if length is not None and request.headers.get("Content-Encoding", "identity").lower() == "identity":
        if length > limit:
            raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes.")
        if not length:
            return b""
        content = request.content
        try:
            data = content.read_nowait(length)
            if len(data) == length:
                return data
            async with asyncio.timeout(timeout):
                return data + await content.readexactly(length - len(data))
        except TimeoutError:
            raise _too_slow(timeout) from None
        except (asyncio.IncompleteReadError, RequestPayloadError, HttpProcessingError):
            raise _unreadable() from None
    # Chunked, or compressed (aiohttp inflates it; `limit` then bounds the inflated size).
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                parts.append(chunk)
    except TimeoutError:
        raise _too_slow(timeout) from None
    except (asyncio.IncompleteReadError, RequestPayloadError, HttpProcessingError):
        raise _unreadable() from None
    return b"".join(parts)


def _too_slow(timeout: float) -> InvalidRequest:
    return InvalidRequest(f"The request body did not arrive within {timeout:g} s.", code="request_timeout", status=408)


def _unreadable() -> InvalidRequest:
    return InvalidRequest(
        "The request body could not be read: it ended early or its encoding is invalid.", code="invalid_body"
    )


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Expected a JSON object "
            f"({exc.msg} at position {exc.pos}).",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def duplicates_model(raw: bytes) -> bool:
    """Whether `"model"` occurs more than once: the body must then be re-serialised.

    orjson keeps the last of duplicate keys, and that is the model checked against the
    key's allow-list; an upstream keeping the first would run another one. Re-serialising
    sends only the checked one. (A `"model"` inside a string is escaped, so never counts.)
    """
    return raw.count(b'"model"') > 1


def nested_too_deeply(exc: BaseException) -> InvalidRequest | None:
    """The 400 for a body orjson could parse (1,024 levels) but cannot write back (254)."""
    if isinstance(exc, TypeError) and str(exc) == "Recursion limit reached":
        return InvalidRequest("The JSON body is nested too deeply (at most 254 levels).", code="invalid_json")
    return None


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    got = "null" if value is None else type(value).__name__
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {got}.",
        param=param,
        code="invalid_type",
    )


def check_body(endpoint: str, body: dict[str, Any]) -> tuple[str, bool]:
    """The (model, stream) of a model call, or a 400 naming the offending parameter."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _type_error("stream_options", "an object", opts)

    if endpoint == CHAT:
        messages = body.get("messages")
        if messages is None:
            raise InvalidRequest(
                "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if not isinstance(messages, list):
            raise _type_error("messages", "an array", messages)
        if not messages:
            raise InvalidRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                param="messages",
                code="empty_array",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _type_error(f"messages[{i}]", "an object", message)
            if not isinstance(message.get("role"), str):
                raise _type_error(f"messages[{i}].role", "a string", message.get("role"))
    elif endpoint == EMBEDDINGS:
        value = body.get("input")
        if value is None:
            raise InvalidRequest(
                "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        if not isinstance(value, (str, list)):
            raise _type_error("input", "a string or an array", value)
        if isinstance(value, list) and not value:
            raise InvalidRequest("Invalid 'input': empty array.", param="input", code="empty_array")
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            raise InvalidRequest(
                f"Invalid value for 'encoding_format': {fmt!r}. Expected 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
    elif endpoint == COMPLETIONS:
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise _type_error("prompt", "a string or an array", prompt)
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _type_error(key, "an integer", value)
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise _type_error(key, "a number", value)
    return model, bool(stream)
