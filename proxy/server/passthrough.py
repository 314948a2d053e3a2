"""What the pass-through route (`/v1/*` beyond the model endpoints) forwards, decided by route.

Requests go upstream on the gateway's own credentials, so what may pass is decided from
the method and the path, never from the body's shape:

- only the methods the OpenAI API uses (GET, POST, DELETE); TRACE, PUT, PATCH, ... would
  hand an echoing upstream the gateway's key;
- a path that an upstream or a proxy in front of it could resolve elsewhere (dot
  segments, however encoded; `..;`; backslashes) is refused, while ordinary percent-
  encoding (`file-a%2Fb`) passes as the client wrote it;
- the body's `model` counts (for routing and a key's allow-list) only on the routes where
  the model is what runs (`POST /v1/responses`, `/v1/audio/speech`, ...). Elsewhere
  (batches, vector stores, cancelling a job) a `model` in the body means nothing to the
  upstream, and must not let a model-limited key in.
"""

from __future__ import annotations

from urllib.parse import unquote

#: Methods forwarded; others are answered with 405 here.
METHODS = ("GET", "POST", "DELETE")
ALLOW = ", ".join(METHODS)

#: POST routes (the part after /v1/) whose JSON body's `model` is the model that runs.
MODEL_ROUTES = frozenset(
    {
        "responses",
        "responses/input_tokens",
        "responses/compact",
        "audio/speech",
        "images/generations",
        "moderations",
        "realtime/sessions",
        "realtime/client_secrets",
        "videos",
    }
)


def names_model(method: str, path: str) -> bool:
    """Whether the body's `model` decides this request (`path` is after /v1/, raw)."""
    return method == "POST" and path in MODEL_ROUTES


def is_safe_path(raw: str) -> bool:
    """Whether `raw` (the path after /v1/, as sent) stays under /v1 wherever it is resolved.

    Decoded repeatedly (double encoding), no segment may be a dot segment, also with a
    `;parameter` (Tomcat's `..;`), and no backslash (read as `/` by some servers) or
    control character may appear.
    """
    decoded = raw
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        return False  # still changing after three rounds: nobody needs that
    if "\\" in decoded or any(ord(ch) < 0x20 or ch == "\x7f" for ch in decoded):
        return False
    return all(segment.split(";", 1)[0] not in (".", "..") for segment in decoded.split("/"))
