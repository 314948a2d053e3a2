"""A fake Azure OpenAI resource on loopback, with Azure's quirks.

It checks what a real resource checks (the path, `api-version`, the `api-key` header or
an Entra ID bearer token, the deployment name) and answers the way Azure does: a
prompt-filter chunk with empty `choices` and a blank id first in every stream,
`content_filter_results` on choices, a usage chunk, and Azure's error bodies.

Behaviour is picked by the last user message:
  "please filter me"  -> 400 content_filter with innererror (ResponsibleAIPolicyViolation)
  "rate limit me"     -> 429 with retry-after-ms only
  "fail with 500"     -> 500
  "fail with 503"     -> 503
  "annotate"          -> the stream also carries an async-filter annotation chunk
  "filter the answer" -> the completion is cut by the output filter (finish_reason content_filter)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]


@dataclass
class AzureState:
    api_key: str | None = "azure-upstream-key-0123456789"
    api_version: str = "2024-10-21"
    deployments: dict[str, str] = field(default_factory=lambda: {"prod-gpt4o": "chat", "prod-embed": "embed"})
    tokens: set[str] = field(default_factory=set)  # accepted Entra ID bearer tokens
    accept_token: Callable[[str], bool] | None = None  # or a check of its own
    requests: list[dict[str, Any]] = field(default_factory=list)
    answer: str = "Hello from Azure"
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # v1 Responses API, by id

    def seen(self) -> dict[str, Any]:
        return self.requests[-1]


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _access_denied() -> web.Response:
    return _error(
        401,
        {
            "error": {
                "code": "401",
                "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API endpoint for "
                "your resource.",
            }
        },
    )


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def make_app(state: AzureState) -> web.Application:
    app = web.Application()

    def check_auth(request: web.Request) -> web.Response | None:
        key = request.headers.get("api-key")
        auth = request.headers.get("Authorization", "")
        if key is not None and auth:
            return _error(400, {"error": {"code": "BadRequest", "message": "Send api-key or a token, not both."}})
        if key is not None:
            return None if state.api_key is not None and key == state.api_key else _access_denied()
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token and (token in state.tokens or (state.accept_token is not None and state.accept_token(token))):
            return None
        return _access_denied()

    async def handle(request: web.Request, deployment: str | None, op: str) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        state.requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
                "deployment": deployment,
            }
        )
        if deployment is not None and request.query.get("api-version") != state.api_version:
            return _error(404, {"error": {"code": "404", "message": "Resource not found"}})
        denied = check_auth(request)
        if denied is not None:
            return denied
        name = deployment or body.get("model")
        if name not in state.deployments:
            return _error(
                404,
                {
                    "error": {
                        "code": "DeploymentNotFound",
                        "message": "The API deployment for this resource does not exist. If you created the "
                        "deployment within the last 5 minutes, please wait a moment and try again.",
                    }
                },
            )
        if op == "embeddings":
            return _embeddings(body, name)
        text = _last_user_text(body)
        if "please filter me" in text:
            return _error(
                400,
                {
                    "error": {
                        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                        "management policy. Please modify your prompt and retry.",
                        "type": None,
                        "param": "prompt",
                        "code": "content_filter",
                        "status": 400,
                        "innererror": {
                            "code": "ResponsibleAIPolicyViolation",
                            "content_filter_result": {
                                **FILTER_RESULTS,
                                "violence": {"filtered": True, "severity": "high"},
                            },
                        },
                    }
                },
            )
        if "rate limit me" in text:
            return _error(
                429,
                {
                    "error": {
                        "code": "429",
                        "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                        "version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing "
                        "tier. Please retry after 6 seconds.",
                    }
                },
                {"retry-after-ms": "5200"},
            )
        for status in (500, 503):
            if f"fail with {status}" in text:
                return _error(status, {"error": {"code": "InternalServerError", "message": "Backend failure."}})
        if body.get("stream"):
            return await _stream(request, body, name, text, op, state)
        return _chat(body, name, state) if op == "chat/completions" else _completion(body, name, state)

    for op in ("chat/completions", "completions", "embeddings"):

        async def classic(request: web.Request, _op: str = op) -> web.StreamResponse:
            return await handle(request, request.match_info["deployment"], _op)

        async def v1(request: web.Request, _op: str = op) -> web.StreamResponse:
            return await handle(request, None, _op)

        app.router.add_post(f"/openai/deployments/{{deployment}}/{op}", classic)
        app.router.add_post(f"/openai/v1/{op}", v1)

    async def files(request: web.Request) -> web.Response:
        state.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers)})
        denied = check_auth(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [], "has_more": False})

    app.router.add_get("/openai/v1/files", files)

    async def responses(request: web.Request) -> web.Response:
        """Azure's v1 Responses API (non-streaming is enough for pass-through tests)."""
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        state.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                               "body": body, "raw": raw})
        denied = check_auth(request)
        if denied is not None:
            return denied
        if request.method == "GET":
            rid = request.match_info.get("rid", "")
            stored = state.responses.get(rid)
            if stored is None:
                return _error(404, {"error": {"code": "404", "message": f"Response with id '{rid}' not found."}})
            return web.json_response(stored)
        if body.get("model") not in state.deployments:
            return _error(404, {"error": {"code": "DeploymentNotFound", "message": "No such deployment."}})
        rid = f"resp_azure{len(state.responses):04d}"
        out = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
               "error": None, "incomplete_details": None, "instructions": None, "model": body["model"],
               "output": [{"id": "msg_azure", "type": "message", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": state.answer, "annotations": [],
                                        "logprobs": []}]}],
               "parallel_tool_calls": True, "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
               "metadata": {}, "usage": {"input_tokens": 8, "output_tokens": 3, "total_tokens": 11,
                                         "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                         "output_tokens_details": {"reasoning_tokens": 0}}}  # fmt: skip
        state.responses[rid] = out
        return web.json_response(out)

    app.router.add_post("/openai/v1/responses", responses)
    app.router.add_get("/openai/v1/responses/{rid}", responses)
    return app


def _usage(body: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if not tools or body.get("tool_choice") in (None, "none", "auto"):
        return None
    name = tools[0]["function"]["name"]
    return [{"id": "call_azure_1", "type": "function", "function": {"name": name, "arguments": '{"city":"Paris"}'}}]


def _chat(body: dict[str, Any], model: str, state: AzureState) -> web.Response:
    calls = _tool_calls(body)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else state.answer, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish_reason = "content_filter" if "filter the answer" in _last_user_text(body) else "stop"
    out = {
        "id": "chatcmpl-azure-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_azure",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else finish_reason,
                "content_filter_results": FILTER_RESULTS,
            }
        ],
        "usage": _usage(body),
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _completion(body: dict[str, Any], model: str, state: AzureState) -> web.Response:
    out = {
        "id": "cmpl-azure-1",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "gpt-35-turbo-instruct",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "choices": [{"index": 0, "text": state.answer, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(body),
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _embeddings(body: dict[str, Any], model: str) -> web.Response:
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else list(raw or [])
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i, _ in enumerate(texts)]
    out = {
        "object": "list",
        "data": data,
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(
    request: web.Request, body: dict[str, Any], model: str, text: str, op: str, state: AzureState
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    created = int(time.time())
    chat = op == "chat/completions"
    obj = "chat.completion.chunk" if chat else "text_completion"
    cid = "chatcmpl-azure-s" if chat else "cmpl-azure-s"

    def chunk(choice: dict[str, Any]) -> bytes:
        return _sse(
            {
                "choices": [choice],
                "created": created,
                "id": cid,
                "model": "gpt-4o-2024-08-06",
                "object": obj,
                "system_fingerprint": "fp_azure",
            }
        )

    first = _sse(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTER_RESULTS,
        }
    )
    calls = _tool_calls(body) if chat else None
    if chat:
        role = chunk(
            {
                "content_filter_results": {},
                "delta": {"content": "", "refusal": None, "role": "assistant"},
                "finish_reason": None,
                "index": 0,
                "logprobs": None,
            }
        )
        await resp.write(first + role[:17])  # one read holds the quirk and half of the next event
        await resp.write(role[17:])
    else:
        await resp.write(first)
    if calls:
        call = {"index": 0, **calls[0]}
        await resp.write(
            chunk(
                {
                    "content_filter_results": {},
                    "delta": {"tool_calls": [call]},
                    "finish_reason": None,
                    "index": 0,
                    "logprobs": None,
                }
            )
        )
    else:
        for word in state.answer.split(" "):
            await asyncio.sleep(0)
            piece = {"content_filter_results": FILTER_RESULTS, "finish_reason": None, "index": 0, "logprobs": None}
            if chat:
                piece["delta"] = {"content": word + " "}
            else:
                piece["text"] = word + " "
            await resp.write(chunk(piece))
    filtered = "filter the answer" in text
    finish: dict[str, Any] = {
        "content_filter_results": {"violence": {"filtered": True, "severity": "medium"}} if filtered else {},
        "finish_reason": "tool_calls" if calls else ("content_filter" if filtered else "stop"),
        "index": 0,
        "logprobs": None,
    }
    if chat:
        finish["delta"] = {}
    else:
        finish["text"] = ""
    await resp.write(chunk(finish))
    if "annotate" in text:
        await resp.write(
            _sse(
                {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": None,
                            "content_filter_results": FILTER_RESULTS,
                            "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 20},
                        }
                    ],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                }
            )
        )
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        await resp.write(
            _sse(
                {
                    "choices": [],
                    "created": created,
                    "id": cid,
                    "model": "gpt-4o-2024-08-06",
                    "object": obj,
                    "usage": _usage(body),
                }
            )
        )
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
