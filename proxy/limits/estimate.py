"""What a request may cost before it is sent: its token estimate and its budget period.

The estimate is what admission reserves; settlement replaces it with the upstream's
own usage. Input is estimated from the text (about 4 characters a token, the rule of
thumb of OpenAI's docs) without a tokenizer; output is the request's own cap, which
the upstream enforces, so a request that sets one cannot exceed its reservation.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Period

#: Tokens counted for one image part (a high-detail 1024x1024 image at OpenAI is 765).
IMAGE_TOKENS = 1000
#: Tokens of framing per chat message (role, separators).
MESSAGE_TOKENS = 4
_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_OTHER_KEYS = frozenset(("prompt", "input", "instructions", "tools"))


def _count(value: Any) -> bool:
    """Whether `value` is a JSON integer (not a bool); `type` first, the common case without a call."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def output_cap(body: dict[str, Any] | None) -> int | None:
    """The request's cap on output tokens (times `n` choices), or None if it sets none."""
    if not body:
        return None
    for key in _OUTPUT_KEYS:
        value = body.get(key)
        if value is not None and _count(value) and value >= 0:
            n = body.get("n")
            cap: int = value * n if n is not None and _count(n) and n > 1 else value
            return cap
    return None


def _chars(value: Any) -> tuple[int, int]:
    """(characters of text, image parts) in a message content or an input item."""
    if isinstance(value, str):
        return len(value), 0
    chars = images = 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("image_url", "input_image", "image"):
                    images += 1
                elif isinstance(part.get("text"), str):
                    chars += len(part["text"])
                elif "content" in part:
                    c, i = _chars(part["content"])
                    chars, images = chars + c, images + i
    return chars, images


def input_tokens(body: dict[str, Any] | None, raw_size: int) -> int:
    """About how many input tokens a request carries (chat, completions, embeddings, responses)."""
    if not body:
        return 0
    chars = images = extra = 0
    messages = body.get("messages")
    if type(messages) is list:
        for m in messages:
            if type(m) is dict:
                content = m.get("content")
                if type(content) is str:  # the common case, without a call
                    chars += len(content)
                elif content is not None:
                    c, i = _chars(content)
                    chars, images = chars + c, images + i
                if "tool_calls" in m:
                    chars += len(str(m["tool_calls"]))
        extra += MESSAGE_TOKENS * len(messages)
    if not _OTHER_KEYS.isdisjoint(body):  # a chat body has none of them: one C-level check
        for key in ("prompt", "input", "instructions"):
            value = body.get(key)
            if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                extra += len(value)  # token ids
            elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
                extra += sum(len(v) for v in value)
            elif value is not None:
                c, i = _chars(value)
                chars, images = chars + c, images + i
        tools = body.get("tools")
        if tools:
            chars += len(str(tools))
    if not chars and not images and not extra:
        return (raw_size + 3) // 4  # a body in some other shape: its size is the bound
    return (chars + 3) // 4 + images * IMAGE_TOKENS + extra


# ---------------------------------------------------------------- budget periods


class Periods:
    """The current calendar period (UTC) of each kind: its id, when it ends. Cached until then."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, str]] = {}

    def current(self, period: Period, now: float | None = None) -> tuple[str, float | None]:
        """(period id, its end in epoch seconds or None for `total`)."""
        if period == "total":
            return "total", None
        t = time.time() if now is None else now
        cached = self._cache.get(period)
        if cached is not None and now is None and t < cached[0]:
            return cached[1], cached[0]
        day = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "day":
            start, end = day, day + timedelta(days=1)
            pid = "d" + start.strftime("%Y-%m-%d")
        elif period == "week":  # ISO weeks start on Monday
            start = day - timedelta(days=day.weekday())
            end = start + timedelta(days=7)
            pid = "w" + start.strftime("%Y-%m-%d")
        else:
            start = day.replace(day=1)
            end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
            pid = "m" + start.strftime("%Y-%m")
        end_ts = end.timestamp()
        if now is None:
            self._cache[period] = (end_ts, pid)
        return pid, end_ts
