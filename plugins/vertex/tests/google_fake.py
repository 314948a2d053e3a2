"""Fake Google services on loopback: an OAuth token endpoint and Vertex AI's OpenAI API.

The token endpoint does what Google's does for a service account: it takes the
`urn:ietf:params:oauth:grant-type:jwt-bearer` grant, checks the assertion's RS256
signature with the service account's public key, its issuer, audience, scope and
lifetime, and issues an access token that lives `lifetime` seconds. It counts issues.

The Vertex side accepts only live tokens it issued (401 with Google's list-wrapped body
otherwise), checks the project/location path, records requests, and answers like
Gemini's OpenAI-compatible endpoint. Behaviour by the last user message:
  "google 400|403|404|429|503|504"  -> that Google error (list-wrapped)
  "google object 400"               -> the same as a plain object
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth names it whatever token_uri is

GOOGLE_ERRORS = {
    400: ("INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "foo" for project my-proj-123.'),
    403: ("PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource."),
    404: (
        "NOT_FOUND",
        "Publisher Model `projects/my-proj-123/locations/us-central1/publishers/google/models/x` not found.",
    ),
    429: ("RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "Deadline exceeded."),
}


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def google_error(status: int, google_status: str, message: str, *, wrap: bool = True) -> web.Response:
    error = {"error": {"code": status, "message": message, "status": google_status}}
    return web.Response(status=status, body=orjson.dumps([error] if wrap else error), content_type="application/json")


@dataclass
class GoogleState:
    public_key: rsa.RSAPublicKey
    client_email: str
    project: str = "my-proj-123"
    location: str = "us-central1"
    lifetime: float = 3600.0
    token_url: str = ""  # set once the server runs
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry
    revoked: set[str] = field(default_factory=set)
    rejected_assertions: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issue_count(self) -> int:
        return len(self.issued)

    def revoke_all(self) -> None:
        self.revoked.update(self.issued)

    def seen(self) -> dict[str, Any]:
        return self.requests[-1]

    # -------------------------------------------------------------- token endpoint

    def verify_assertion(self, assertion: str) -> str | None:
        """None if the assertion is good, else why not."""
        try:
            header_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(sig_b64)
        except ValueError:
            return "malformed assertion"
        if header.get("alg") != "RS256":
            return "alg must be RS256"
        try:
            self.public_key.verify(
                signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != self.client_email:
            return "wrong issuer"
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_url):
            return "wrong audience"
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return "missing cloud-platform scope"
        if not (claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0) + 300):
            return "assertion expired"
        if claims["exp"] - claims["iat"] > 3600:
            return "assertion lives too long"
        return None

    def token_ok(self, token: str) -> bool:
        with self.lock:
            expiry = self.issued.get(token)
            return expiry is not None and expiry > time.time() and token not in self.revoked


def make_app(state: GoogleState) -> web.Application:
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        problem = state.verify_assertion(str(form.get("assertion", "")))
        if problem is not None:
            state.rejected_assertions += 1
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        value = "ya29.fake-" + secrets.token_urlsafe(24)
        with state.lock:
            state.issued[value] = time.time() + state.lifetime
        return web.json_response({"access_token": value, "expires_in": int(state.lifetime), "token_type": "Bearer"})

    async def chat(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        state.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": body, "endpoint": m["endpoint"]}
        )
        auth = request.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and state.token_ok(auth[7:])):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
            )
        if (m["project"], m["location"]) != (state.project, state.location):
            return google_error(404, "NOT_FOUND", "Project or location not found.")
        text = _last_user_text(body)
        for status, (google_status, message) in GOOGLE_ERRORS.items():
            if f"google {status}" in text or f"google object {status}" in text:
                return google_error(status, google_status, message, wrap="google object" not in text)
        if body.get("stream"):
            return await _stream(request, body)
        return web.Response(body=orjson.dumps(_completion(body)), content_type="application/json")

    app.router.add_post("/token", token)
    app.router.add_post(
        "/{version:v1|v1beta1}/projects/{project}/locations/{location}/endpoints/{endpoint}/chat/completions", chat
    )
    return app


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _tool_result(body: dict[str, Any]) -> str | None:
    """The tool output the conversation ends with, if it does."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    return str(last.get("content")) if last.get("role") == "tool" else None


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    if not tools or _tool_result(body) is not None:
        return None
    asked = "use the tool" in _last_user_text(body).lower() and body.get("tool_choice") != "none"
    if body.get("tool_choice") in (None, "none", "auto") and not asked:
        return None
    name = tools[0]["function"]["name"]
    return {"id": "call_gemini_1", "type": "function", "function": {"name": name, "arguments": '{"city":"Rome"}'}}


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    call = _tool_call(body)
    result = _tool_result(body)
    text = f"Gemini heard: {result}" if result is not None else "Hello from Gemini"
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
    if call:
        message["tool_calls"] = [call]
    return {
        "id": "gemini-resp-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "",
        "system_fingerprint": "",
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if call else "stop"}
        ],
        "usage": _usage(),
    }


async def _stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        payload = {
            "id": "gemini-stream-1",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model") or "",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"  # CRLF framing (SSE allows it): nothing may assume LF

    call = _tool_call(body)
    if call:
        await resp.write(chunk({"role": "assistant", "tool_calls": [{"index": 0, **call}]}))
        await resp.write(chunk({}, "tool_calls"))
    else:
        result = _tool_result(body)
        first, rest = ("Gemini heard:", f" {result}") if result is not None else ("Hello", " from Gemini")
        await resp.write(chunk({"role": "assistant", "content": first}))
        await resp.write(chunk({"content": rest}))
        await resp.write(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        payload = {
            "id": "gemini-stream-1",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model") or "",
            "choices": [],
            "usage": _usage(),
        }
        await resp.write(b"data: " + orjson.dumps(payload) + b"\r\n\r\n")
    await resp.write(b"data: [DONE]\r\n\r\n")
    await resp.write_eof()
    return resp
