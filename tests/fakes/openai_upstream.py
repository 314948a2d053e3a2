"""A fake OpenAI server speaking the real wire protocol, written from OpenAI's API docs.

It is deliberately independent of relaygate's code: it does not import `proxy`, so a
bug shared by the gateway and its test double cannot hide.

    upstream = FakeOpenAI(api_key="sk-upstream-...")
    with FakeServer(upstream.app) as server:      # proxy.testing.FakeServer
        ...  # point a `type: openai` provider at f"{server.url}/v1"
        upstream.requests[-1].json                # what arrived, byte for byte in .body

Per-model (or default) behaviours make it misbehave: `upstream.on("m", Behaviour(status=500))`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.parser
import email.policy
import hashlib
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

EMBED_DIMS = 8
AUDIO_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-3.5-turbo-instruct", "real-model")


@dataclass
class Recorded:
    """One request as it arrived: nothing normalised."""

    method: str
    path: str
    query: str  # as sent, still percent-encoded
    headers: CIMultiDict[str]
    body: bytes
    raw_path: str = ""  # as sent, still percent-encoded

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Behaviour:
    """How to answer. The defaults answer normally, at once."""

    status: int = 200  # >= 400: answer with OpenAI's error body for that status
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_param: str | None = None
    retry_after: str | None = None  # 429: the retry-after header
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds between streamed chunks
    fail_after_chunks: int | None = None  # close the connection after this many events
    words: int | None = None  # stream this many extra filler words (long streams)
    split_writes: bool = False  # write each SSE event in two pieces (events straddle TCP reads)
    crlf: bool = False  # end SSE lines with CRLF, as some servers and proxies do
    body: bytes | None = None  # a raw body instead of the normal one (sent as text/html if status >= 400)
    gate: threading.Event | None = None  # hold the answer until the test sets it
    cached_tokens: int | None = None  # report usage.prompt_tokens_details.cached_tokens
    linger: float = 0.0  # seconds to hold a Responses stream open after its last event
    refusal: str | None = None  # the model refuses (chat: `message.refusal`, `delta.refusal` in streams)


_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request: something in the body is wrong."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(status: int, message: str | None = None, *, etype: str | None = None,
               code: str | None = None, param: str | None = None) -> bytes:
    dtype, dcode, dmessage = _ERROR_DEFAULTS.get(status, ("server_error", None, f"HTTP {status}"))
    return orjson.dumps({"error": {
        "message": message or dmessage,
        "type": etype or dtype,
        "param": param,
        "code": code if code is not None else dcode,
    }})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _images(messages: list[Any]) -> list[str]:
    urls = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                urls.append(part["image_url"]["url"])
    return urls


def image_tag(url: str) -> str:
    """How the fake acknowledges an image part in its answer."""
    return "[image sha256=" + hashlib.sha256(url.encode()).hexdigest() + "]"


def embedding_of(text: str) -> list[float]:
    """A deterministic vector whose values are exact in float32."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 256 for b in digest[:EMBED_DIMS]]


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


class FakeOpenAI:
    """State and handlers of the fake; `app` is the factory to hand to `FakeServer`."""

    def __init__(self, api_key: str = "sk-upstream-test-0123456789") -> None:
        self.api_key = api_key
        self.url = ""  # set by whoever starts the server: "http://127.0.0.1:<port>"
        self.requests: list[Recorded] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.scripts: dict[str, list[Behaviour]] = {}
        self.default = Behaviour()
        self.models = list(MODELS)
        #: Streams the client (the gateway) abandoned: the handler saw CancelledError or a reset.
        self.disconnects: list[str] = []
        self.disconnected = threading.Event()
        #: Streams that ran to their end.
        self.completed: list[str] = []
        #: Responses stored by POST /v1/responses (store defaults to true): id -> (response, input items).
        self.responses: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    # -------------------------------------------------------------- control

    def on(self, model: str, behaviour: Behaviour) -> None:
        self.behaviours[model] = behaviour

    def script(self, model: str, behaviours: list[Behaviour]) -> None:
        """Answer the next requests for `model` with these, in order; then as `on` says."""
        self.scripts[model] = list(behaviours)

    def behaviour_for(self, model: Any) -> Behaviour:
        if not isinstance(model, str):
            return self.default
        script = self.scripts.get(model)
        if script:
            return script.pop(0)
        return self.behaviours.get(model, self.default)

    def last(self, path: str | None = None) -> Recorded:
        hits = [r for r in self.requests if path is None or r.path == path]
        assert hits, f"the fake upstream received no request for {path or 'any path'}"
        return hits[-1]

    # -------------------------------------------------------------- app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_auth], client_max_size=64 << 20)
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/embeddings", self._embeddings)
        r.add_get("/v1/models", self._list_models)
        r.add_get("/v1/models/{model}", self._get_model)
        r.add_post("/v1/moderations", self._moderations)
        r.add_post("/v1/audio/speech", self._speech)
        r.add_post("/v1/audio/transcriptions", self._transcriptions)
        r.add_post("/v1/responses", self._responses_create)
        r.add_get("/v1/responses/{rid}", self._responses_get)
        r.add_delete("/v1/responses/{rid}", self._responses_get)
        r.add_get("/v1/responses/{rid}/input_items", self._responses_items)
        r.add_get("/v1/files", self._files)
        r.add_get("/v1/files/{file_id}", self._file)
        r.add_delete("/v1/files/{file_id}", self._file)
        return app

    @web.middleware
    async def _record_and_auth(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(request.method, request.path, request.rel_url.raw_query_string, CIMultiDict(request.headers), body,
                     request.rel_url.raw_path)
        )
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            presented = auth.removeprefix("Bearer ")
            # OpenAI quotes (part of) the presented key; quote all of it, the worst case.
            message = (
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            ) if presented else "You didn't provide an API key."
            return self._error(401, message, code="invalid_api_key" if presented else None)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return self._error(404, f"Invalid URL ({request.method} {request.path})", code=None)
            if exc.status == 405:
                return self._error(405, f"Invalid method for URL ({request.method} {request.path})")
            raise

    def _error(self, status: int, message: str | None = None, *, etype: str | None = None,
               code: str | None = None, param: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=error_body(status, message, etype=etype, code=code, param=param),
            content_type="application/json",
            headers=headers,
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(
                body=error_body(400, "We could not parse the JSON body of your request."),
                content_type="application/json",
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(body=error_body(400, "Body must be an object"), content_type="application/json")
        return body

    async def _misbehave(self, body: dict[str, Any]) -> tuple[Behaviour, web.Response | None]:
        """Apply the model's behaviour up to the response headers; an error response, or None."""
        b = self.behaviour_for(body.get("model"))
        while b.gate is not None and not b.gate.is_set():  # noqa: ASYNC110  # set from the test's thread
            await asyncio.sleep(0.005)
        if b.delay:
            try:
                await asyncio.sleep(b.delay)
            except asyncio.CancelledError:  # the client gave up before the headers
                self.disconnects.append(str(body.get("model")))
                self.disconnected.set()
                raise
        if b.status >= 400 and b.body is not None:  # e.g. a load balancer's HTML page
            return b, web.Response(status=b.status, body=b.body, content_type="text/html")
        if b.status >= 400:
            headers = {"retry-after": b.retry_after} if b.retry_after else None
            message = b.error_message
            if b.status == 404 and message is None:
                message = (f"The model `{body.get('model')}` does not exist or you do not have access to it.")
            return b, self._error(b.status, message, etype=b.error_type, code=b.error_code,
                                  param=b.error_param, headers=headers)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return b, self._error(400, "you must provide a model parameter", param="model")
        return b, None

    # -------------------------------------------------------------- chat

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        behaviour, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "Invalid 'messages': expected a non-empty array.", param="messages")
        model = body["model"]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        answer = self._answer(messages)
        tool = self._tool_wanted(body, last)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        truncated = isinstance(limit, int) and tool is None and count_tokens(answer) > limit
        if truncated:  # the model ran out of tokens: the answer stops at the limit
            answer = " ".join(answer.split(" ")[:limit])
        finish = "tool_calls" if tool else "length" if truncated else "stop"
        prompt_tokens = sum(count_tokens(_text(m.get("content"))) for m in messages if isinstance(m, dict))
        completion_tokens = count_tokens(answer) if tool is None else 5
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if behaviour.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
        cid = "chatcmpl-fake" + hashlib.sha256(request_key(body)).hexdigest()[:16]
        created = int(time.time())
        tool_call = None
        if tool is not None:
            arguments = orjson.dumps({"echo": _text(last.get("content"))}).decode()
            tool_call = {"id": "call_" + cid[-10:], "type": "function",
                         "function": {"name": tool, "arguments": arguments}}
        if body.get("stream") is True:
            return await self._chat_stream(request, body, behaviour, cid, created, answer, tool_call, usage, finish)
        if behaviour.body is not None:
            return web.Response(body=behaviour.body, content_type="application/json")
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_call or behaviour.refusal else answer,
                                   "refusal": behaviour.refusal, "annotations": []}
        if tool_call:
            message["tool_calls"] = [tool_call]
        out = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
        }
        return web.json_response(out, dumps=lambda o: orjson.dumps(o).decode())

    @staticmethod
    def _answer(messages: list[Any]) -> str:
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        if last.get("role") == "tool":
            return f"The tool said: {_text(last.get('content'))}"
        text = _text(last.get("content"))
        tags = " ".join(image_tag(u) for u in _images([last]))
        return " ".join(x for x in ("Echo:", text, tags) if x)

    @staticmethod
    def _tool_wanted(body: dict[str, Any], last: dict[str, Any]) -> str | None:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools or last.get("role") == "tool":
            return None
        choice = body.get("tool_choice")
        if choice == "none":
            return None
        first = tools[0].get("function", {}).get("name") if isinstance(tools[0], dict) else None
        if isinstance(choice, dict):
            return (choice.get("function") or {}).get("name")
        if choice == "required" or "use the tool" in _text(last.get("content")).lower():
            return first
        return None

    async def _chat_stream(self, request: web.Request, body: dict[str, Any], b: Behaviour, cid: str,
                           created: int, answer: str, tool_call: dict[str, Any] | None,
                           usage: dict[str, int], finish: str = "stop") -> web.StreamResponse:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        model = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "system_fingerprint": "fp_fake",
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]}
            if include_usage:
                c["usage"] = None
            return c

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if tool_call is not None:
            fn = tool_call["function"]
            events.append(chunk({"tool_calls": [{"index": 0, "id": tool_call["id"], "type": "function",
                                                 "function": {"name": fn["name"], "arguments": ""}}]}))
            args = fn["arguments"]
            for i in range(0, len(args), 8):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]}))
            events.append(chunk({}, "tool_calls"))
        elif b.refusal is not None:
            for i, word in enumerate(b.refusal.split(" ")):
                events.append(chunk({"refusal": word if i == 0 else " " + word}))
            events.append(chunk({}, finish))
        else:
            words = answer.split(" ") + ["and"] * (b.words or 0)
            for i, word in enumerate(words):
                events.append(chunk({"content": word if i == 0 else " " + word}))
            events.append(chunk({}, finish))
        if include_usage:
            events.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": "fp_fake", "choices": [], "usage": usage})
        return await self._stream(request, model, [b"data: " + orjson.dumps(e) + b"\n\n" for e in events], b)

    async def _stream(self, request: web.Request, model: str, events: list[bytes], b: Behaviour) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "Connection": "keep-alive"})
        try:
            await resp.prepare(request)
            for i, ev in enumerate(events):
                if b.fail_after_chunks is not None and i >= b.fail_after_chunks:
                    # Die mid-stream: no terminating chunk, no [DONE].
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if b.chunk_delay and i:
                    await asyncio.sleep(b.chunk_delay)
                if b.crlf:
                    ev = ev.replace(b"\n", b"\r\n")
                if b.split_writes:
                    half = len(ev) // 2
                    await resp.write(ev[:half])
                    await asyncio.sleep(0.005)
                    ev = ev[half:]
                await resp.write(ev)
            await resp.write(b"data: [DONE]\r\n\r\n" if b.crlf else b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append(model)
            self.disconnected.set()
            raise
        self.completed.append(model)
        return resp

    # -------------------------------------------------------------- legacy completions

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        behaviour, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or ()))
        answer = f"Echo: {text}"
        model = body["model"]
        cid = "cmpl-fake" + hashlib.sha256(request_key(body)).hexdigest()[:16]
        created = int(time.time())
        usage = {"prompt_tokens": count_tokens(text), "completion_tokens": count_tokens(answer),
                 "total_tokens": count_tokens(text) + count_tokens(answer)}
        if body.get("stream") is True:
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True

            def chunk(t: str, finish: str | None) -> bytes:
                c: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                                     "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": finish}]}
                if include_usage:
                    c["usage"] = None
                return b"data: " + orjson.dumps(c) + b"\n\n"

            words = answer.split(" ")
            events = [chunk(w if i == 0 else " " + w, None) for i, w in enumerate(words)]
            events.append(chunk("", "stop"))
            if include_usage:
                events.append(b"data: " + orjson.dumps({"id": cid, "object": "text_completion", "created": created,
                                                        "model": model, "choices": [], "usage": usage}) + b"\n\n")
            return await self._stream(request, model, events, behaviour)
        out = {"id": cid, "object": "text_completion", "created": created, "model": model,
               "system_fingerprint": "fp_fake",
               "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}],
               "usage": usage}
        return web.json_response(out)

    # -------------------------------------------------------------- embeddings

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        _, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        raw = body.get("input")
        if raw is None:
            return self._error(400, "'input' is a required property", param="input")
        items = [raw] if isinstance(raw, str) else list(raw)
        if items and all(isinstance(x, int) for x in items):
            items = [items]  # one array of token ids
        fmt = body.get("encoding_format", "float")
        data = []
        tokens = 0
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += count_tokens(text) if isinstance(item, str) else len(item)
            vector = embedding_of(text)
            value: Any = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # -------------------------------------------------------------- models

    async def _list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model(m) for m in self.models]})

    async def _get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.models:
            return self._error(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return web.json_response(self._model(name))

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1686935002, "owned_by": "openai"}

    # -------------------------------------------------------------- other routes (pass-through)

    async def _moderations(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        _, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        return web.json_response({"id": "modr-fake", "model": body.get("model", "omni-moderation-latest"),
                                  "results": [{"flagged": False, "categories": {}, "category_scores": {}}]},
                                 headers={"x-fake-header": "moderations"})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        _, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        for i in range(0, len(AUDIO_BYTES), 256):
            await resp.write(AUDIO_BYTES[i:i + 256])
        await resp.write_eof()
        return resp

    async def _transcriptions(self, request: web.Request) -> web.Response:
        """Multipart upload: answer with what arrived, so tests can compare bytes."""
        raw = await request.read()  # cached: the recording middleware read it already
        head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                 for p in message.iter_parts()}
        if not message.is_multipart() or "file" not in parts:
            return self._error(400, "Expected a multipart upload with a file", param="file")
        return web.json_response({"text": f"{parts['model'].decode()} heard {len(parts['file'])} bytes"})

    async def _files(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [], "has_more": False,
                                  "query": dict(request.query)})


    async def _file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if request.method == "DELETE":
            return web.json_response({"id": file_id, "object": "file", "deleted": True})
        return web.json_response({"id": file_id, "object": "file", "bytes": 3, "created_at": 1700000000,
                                  "filename": "a.jsonl", "purpose": "batch", "status": "processed"})


    # -------------------------------------------------------------- the Responses API

    async def _responses_create(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        behaviour, failed = await self._misbehave(body)
        if failed is not None:
            return failed
        raw = body.get("input")
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}] \
            if isinstance(raw, str) else list(raw or [])
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.responses:
            return self._error(404, f"Previous response with id '{previous}' not found.",
                               param="previous_response_id", code="previous_response_not_found")
        last = next((i for i in reversed(items) if i.get("role") == "user" or i.get("type") == "function_call_output"),
                    {})
        if last.get("type") == "function_call_output":
            text = f"The tool said: {last.get('output')}"
        else:
            content = last.get("content")
            text = "Echo: " + (content if isinstance(content, str) else
                               " ".join(p.get("text", "") for p in content or () if isinstance(p, dict)))
        rid = "resp_fake" + hashlib.sha256(orjson.dumps(body)).hexdigest()[:40] + str(len(self.responses))
        tools = body.get("tools") or []
        wants_tool = tools and (body.get("tool_choice") == "required" or "use the tool" in text.lower()) \
            and last.get("type") != "function_call_output"
        if wants_tool:
            item: dict[str, Any] = {"type": "function_call", "id": "fc_" + rid[5:], "call_id": "call_" + rid[-8:],
                                    "name": tools[0]["name"], "arguments": '{"x":1}', "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_" + rid[5:], "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 17}
        response = {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
            "completed_at": int(time.time()), "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"], "output": [item], "parallel_tool_calls": True,
            "previous_response_id": previous, "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True), "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "metadata": body.get("metadata") or {},
        }
        if body.get("store", True):
            self.responses[rid] = (response, items)
        if body.get("stream") is not True:
            return web.json_response(response, dumps=lambda o: orjson.dumps(o).decode())
        seq = 0

        def ev(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            payload = {"type": kind, "sequence_number": seq, **fields}
            seq += 1
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        start = {**response, "status": "in_progress", "output": [], "completed_at": None}
        start.pop("usage")
        events = [ev("response.created", response=start), ev("response.in_progress", response=start)]
        if item["type"] == "message":
            opened = {**item, "status": "in_progress", "content": []}
            events.append(ev("response.output_item.added", output_index=0, item=opened))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(ev("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                             part=part))
            for i, word in enumerate(text.split(" ")):
                events.append(ev("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0,
                                 delta=word if i == 0 else " " + word, logprobs=[]))
            events.append(ev("response.output_text.done", item_id=item["id"], output_index=0, content_index=0,
                             text=text, logprobs=[]))
            events.append(ev("response.content_part.done", item_id=item["id"], output_index=0, content_index=0,
                             part={**part, "text": text}))
        else:
            events.append(ev("response.output_item.added", output_index=0, item={**item, "arguments": ""}))
            events.append(ev("response.function_call_arguments.delta", item_id=item["id"], output_index=0,
                             delta=item["arguments"]))
            events.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                             name=item["name"], arguments=item["arguments"]))
        events.append(ev("response.output_item.done", output_index=0, item=item))
        events.append(ev("response.completed", response=response))
        return await self._stream_events(request, body["model"], events, behaviour)

    async def _stream_events(self, request: web.Request, model: str, events: list[bytes], b: Behaviour
                             ) -> web.StreamResponse:
        """The Responses API's stream: no [DONE]; the terminal event ends it."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for i, ev in enumerate(events):
            if b.fail_after_chunks is not None and i >= b.fail_after_chunks:
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(ev)
        if b.linger:
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await asyncio.sleep(b.linger)
        await resp.write_eof()
        self.completed.append(model)
        return resp

    async def _responses_get(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.responses:
            return self._error(404, f"Response with id '{rid}' not found.", code=None)
        if request.method == "DELETE":
            del self.responses[rid]
            return web.json_response({"id": rid, "object": "response.deleted", "deleted": True})
        return web.json_response(self.responses[rid][0])

    async def _responses_items(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.responses:
            return self._error(404, f"Response with id '{rid}' not found.", code=None)
        items = [{"id": f"msg_in{i}", "status": "completed", **item} for i, item in enumerate(self.responses[rid][1])]
        return web.json_response({"object": "list", "data": items, "first_id": items[0]["id"] if items else "",
                                  "last_id": items[-1]["id"] if items else "", "has_more": False})


def request_key(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body.get("messages") or body.get("prompt") or "", option=orjson.OPT_SORT_KEYS)


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

