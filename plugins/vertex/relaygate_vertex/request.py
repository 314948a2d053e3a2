"""What goes to Vertex: the parameters it takes, and images it can read.

Vertex's OpenAI-compatible endpoint accepts a subset of OpenAI's chat parameters and
rejects requests with others, so the rest are dropped (an operator can keep more with
`keep_params`). It reads images only from `gs://` and `data:` URLs, and not `detail`, so
http(s) image URLs are fetched by the gateway (through `proxy.upstream.images`, with its SSRF
guard and caps) and sent as base64 data URLs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from proxy.upstream.images import data_url

#: OpenAI chat parameters Vertex's OpenAI-compatible endpoint takes.
SUPPORTED = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "seed",
        "reasoning_effort",
        "extra_body",  # Vertex's own extensions: {"extra_body": {"google": {...}}}
    }
)

#: Fetches each distinct URL once (the provider's `Upstream.fetch_images`, with its policy).
FetchAll = Callable[[list[str]], Awaitable[dict[str, tuple[bytes, str]]]]


def is_http(url: object) -> bool:
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


def _image_parts(messages: list[Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts.extend(
                p
                for p in content
                if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)
            )
    return parts


def needs_images(messages: Any, fetching: bool) -> bool:
    """Whether `inline_images` has anything to do (cheap; no copies)."""
    if not isinstance(messages, list):
        return False
    for part in _image_parts(messages):
        image = part["image_url"]
        if "detail" in image or (fetching and is_http(image.get("url"))):
            return True
    return False


async def inline_images(messages: list[Any], fetch: FetchAll | None) -> list[Any]:
    """A copy of `messages` with http(s) image URLs as data URLs and `detail` removed.

    Only the messages and parts that change are copied; the client's objects are untouched.
    """
    data_urls: dict[str, str] = {}
    if fetch is not None:
        urls = [p["image_url"]["url"] for p in _image_parts(messages) if is_http(p["image_url"].get("url"))]
        if urls:
            fetched = await fetch(urls)
            data_urls = {u: data_url(data, media) for u, (data, media) in fetched.items()}

    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        changed = False
        for part in content:
            image = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
            if isinstance(image, dict) and ("detail" in image or image.get("url") in data_urls):
                new_image = {k: v for k, v in image.items() if k != "detail"}
                if new_image.get("url") in data_urls:
                    new_image["url"] = data_urls[new_image["url"]]
                part = {**part, "image_url": new_image}
                changed = True
            parts.append(part)
        out.append({**message, "content": parts} if changed else message)
    return out
