"""A fake Amazon Bedrock (runtime, control plane, STS and the OpenAI endpoint) on loopback.

Written from AWS's documentation and botocore's service models, independent of the
plugin's code (it imports nothing from `relaygate_bedrock` or `proxy`), so a mistake
shared by the plugin and its double cannot hide:

- SigV4 is recomputed from the raw request with botocore's signer and the known secret;
  a mismatch is a 403 `InvalidSignatureException`, as AWS answers.
- Routes match the raw, percent-encoded path (`request.raw_path`).
- Converse bodies are checked against botocore's bedrock-runtime model, plus the rules
  Bedrock enforces beyond the shapes (alternating roles, toolConfig with tool blocks,
  Claude thinking constraints and signed reasoning blocks in a tool loop).
- ConverseStream answers in the binary event stream, frames split across writes.

What the model "says" is steered by markers in the last user text, e.g. `[[stop:max_tokens]]`,
`[[error:ThrottlingException]]`, `[[stream-error:throttlingException]]`, `[[first-error:...]]`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import math
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .bedrock_shapes import validate_body

MODEL_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke)$")
MARKER = re.compile(r"\[\[([a-z-]+):([^\]]*)\]\]")
ERROR_STATUS = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ServiceQuotaExceededException": 400,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
}
STREAM_ERRORS = ("internalServerException", "modelStreamErrorException", "validationException",
                 "throttlingException", "serviceUnavailableException")
SIGNATURE_KEY = b"fake-bedrock-thinking-signature-key"


@dataclass
class Seen:
    """One request as it arrived."""

    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    access_key: str | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeBedrock:
    """`keys` maps access key id → (secret, session token or None); all are accepted."""

    keys: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    region: str = "us-west-2"
    verify_sigv4: bool = True
    api_key: str | None = None  # the bearer key of the OpenAI-compatible endpoint
    requests: list[Seen] = field(default_factory=list)
    profiles_page_size: int = 2
    split_frames: bool = True
    sts_keys: tuple[str, str, str] = ("ASIAROLEKEY", "role-secret-key-value", "role-session-token-value")
    record: bool = True
    hung_up: list[str] = field(default_factory=list)  # streams the gateway closed before the end

    # ------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.method, request.raw_path, dict(request.headers), body)
        if self.record:
            self.requests.append(seen)
        path = request.raw_path.split("?", 1)[0]
        if path.startswith("/openai/v1/"):
            return self._openai(request, seen)
        service = "sts" if path == "/" and request.method == "POST" else "bedrock"
        denied = self._check_signature(request, seen, service) if self.verify_sigv4 else None
        if denied is not None:
            return denied
        if service == "sts":
            return self._assume_role(body)
        if request.method == "GET" and path == "/foundation-models":
            return self._foundation_models(request)
        if request.method == "GET" and path == "/inference-profiles":
            return self._inference_profiles(request)
        m = MODEL_PATH.match(path)
        if request.method != "POST" or not m:
            return error("UnknownOperationException", f"no route for {request.method} {path}", 404)
        model_id = unquote(m.group(1))
        if quote(model_id, safe="-._~") != m.group(1):
            return error("ValidationException", f"model id not encoded as botocore encodes it: {m.group(1)}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error("SerializationException", "request body is not JSON", 400)
        if m.group(2) == "invoke":
            return self._invoke(model_id, data)
        return await self._converse(request, model_id, data, stream=m.group(2) == "converse-stream")

    # ------------------------------------------------------------ SigV4

    def _check_signature(self, request: web.Request, seen: Seen, service: str) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$", auth)
        if not m:
            return error("IncompleteSignatureException", "Authorization header is missing or malformed", 403)
        key_id, _day, region, signed_service, signed_headers, signature = m.groups()
        if key_id not in self.keys:
            return error("UnrecognizedClientException", "The security token included in the request is invalid.", 403)
        secret, token = self.keys[key_id]
        if region != self.region or signed_service != service:
            return error("InvalidSignatureException", f"Credential should be scoped to {self.region}/{service}", 403)
        if token is not None and request.headers.get("X-Amz-Security-Token") != token:
            return error("UnrecognizedClientException", "The security token included in the request is invalid.", 403)
        names = signed_headers.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return error("InvalidSignatureException", "host and x-amz-date must be signed", 403)
        headers = {name: request.headers.get(name, "") for name in names}
        url = f"http://{request.headers.get('Host', '')}{request.raw_path}"
        aws_request = AWSRequest(method=request.method, url=url, data=seen.body, headers=headers)
        aws_request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(Credentials(key_id, secret, token), service, self.region)
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        if not hmac.compare_digest(expected, signature):
            return error(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
                403,
            )
        seen.access_key = key_id
        return None

    # ------------------------------------------------------------ control plane and STS

    def _foundation_models(self, request: web.Request) -> web.Response:
        summaries = [
            _summary("anthropic.claude-3-7-sonnet-20250219-v1:0", "Anthropic", ["TEXT"], ["INFERENCE_PROFILE"]),
            _summary("anthropic.claude-3-haiku-20240307-v1:0", "Anthropic", ["TEXT"], ["ON_DEMAND"]),
            _summary("amazon.nova-lite-v1:0", "Amazon", ["TEXT"], ["ON_DEMAND", "INFERENCE_PROFILE"]),
            _summary("amazon.titan-embed-text-v2:0", "Amazon", ["EMBEDDING"], ["ON_DEMAND"]),
            _summary("stability.sd3-large-v1:0", "Stability AI", ["IMAGE"], ["ON_DEMAND"]),
        ]
        q = request.query
        if "byOutputModality" in q:
            summaries = [s for s in summaries if q["byOutputModality"] in s["outputModalities"]]
        if "byInferenceType" in q:
            summaries = [s for s in summaries if q["byInferenceType"] in s["inferenceTypesSupported"]]
        return web.json_response({"modelSummaries": summaries})

    def _inference_profiles(self, request: web.Request) -> web.Response:
        profiles = [
            _profile("us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
            _profile("eu.anthropic.claude-3-7-sonnet-20250219-v1:0"),
            _profile("apac.amazon.nova-lite-v1:0"),
            _profile("global.anthropic.claude-sonnet-4-20250514-v1:0"),
            _profile("us.meta.llama3-2-1b-instruct-v1:0"),
        ]
        start = int(request.query.get("nextToken", "0") or 0)
        page = profiles[start : start + self.profiles_page_size]
        out: dict[str, Any] = {"inferenceProfileSummaries": page}
        if start + self.profiles_page_size < len(profiles):
            out["nextToken"] = str(start + self.profiles_page_size)
        return web.json_response(out)

    def _assume_role(self, body: bytes) -> web.Response:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("Action") != "AssumeRole" or not form.get("RoleArn") or not form.get("RoleSessionName"):
            return error("ValidationError", "expected AssumeRole with RoleArn and RoleSessionName", 400)
        key, secret, token = self.sts_keys
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>"
            f"<AssumedRoleUser><Arn>{form['RoleArn']}/{form['RoleSessionName']}</Arn>"
            "<AssumedRoleId>AROA:relaygate</AssumedRoleId></AssumedRoleUser>"
            "</AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"
        )
        return web.Response(text=xml, content_type="text/xml")

    # ------------------------------------------------------------ OpenAI-compatible endpoint

    def _openai(self, request: web.Request, seen: Seen) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key", "type": "invalid_request_error",
                                                "param": None, "code": "invalid_api_key"}}, status=401)
        trace = request.headers.get("X-Amzn-Bedrock-Trace")
        if trace is not None and trace not in ("ENABLED", "DISABLED", "ENABLED_FULL"):
            # AWS documents the header's values in upper case only.
            return web.json_response({"error": {"message": f"invalid X-Amzn-Bedrock-Trace {trace!r}",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        body = orjson.loads(seen.body)
        text = "blocked by guardrail" if request.headers.get("X-Amzn-Bedrock-GuardrailIdentifier") else "hello"
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })

    # ------------------------------------------------------------ InvokeModel (embeddings)

    def _invoke(self, model_id: str, data: dict[str, Any]) -> web.Response:
        if "cohere.embed" in model_id:
            texts = data.get("texts")
            if not isinstance(texts, list) or not 1 <= len(texts) <= 96:
                return error("ValidationException", "texts must hold 1 to 96 strings")
            if data.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
                return error("ValidationException", "input_type is required for embed v3 models")
            dims = data.get("output_dimension", 8)
            vectors = [_vector(t, dims) for t in texts]
            embeddings: Any = {"float": vectors} if data.get("embedding_types") else vectors
            return web.json_response({"id": "x", "texts": texts, "embeddings": embeddings,
                                      "response_type": "embeddings_by_type"})
        if "titan-embed" in model_id:
            if set(data) - {"inputText", "dimensions", "normalize", "embeddingTypes"}:
                return error("ValidationException", f"extraneous key(s) {sorted(set(data) - {'inputText'})}")
            if "v2" not in model_id and set(data) != {"inputText"}:
                return error("ValidationException", "Titan v1 takes inputText only")
            text = data.get("inputText")
            if not isinstance(text, str) or not text:
                return error("ValidationException", "inputText is required")
            return web.json_response({"embedding": _vector(text, data.get("dimensions", 8)),
                                      "inputTextTokenCount": len(text.split())})
        return error("ValidationException", f"fake has no InvokeModel behaviour for {model_id}")

    # ------------------------------------------------------------ Converse

    async def _converse(self, request: web.Request, model_id: str, data: dict[str, Any], stream: bool
                        ) -> web.StreamResponse:
        problems = validate_body("ConverseStream" if stream else "Converse", data)
        problems += _semantic_problems(model_id, data)
        if problems:
            return error("ValidationException", "; ".join(problems))
        markers = dict(MARKER.findall(_last_user_text(data)))
        if "error" in markers:
            name = markers["error"]
            return error(name, f"fake {name}", ERROR_STATUS.get(name, 400))
        blocks, stop_reason = _answer(model_id, data, markers)
        usage = {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18}
        if "cache" in markers:
            usage.update(cacheReadInputTokens=5, cacheWriteInputTokens=3, totalTokens=26)
        if not stream:
            return web.json_response({
                "output": {"message": {"role": "assistant", "content": blocks}},
                "stopReason": stop_reason, "usage": usage, "metrics": {"latencyMs": 12},
            })
        frames = _stream_frames(blocks, stop_reason, usage, markers)
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        if "slow" in markers:  # one frame per `slow` seconds, noticing when the gateway hangs up
            try:
                for frame in frames:
                    await resp.write(frame)
                    await asyncio.sleep(float(markers["slow"]))
            except (asyncio.CancelledError, ConnectionResetError):
                self.hung_up.append(request.raw_path)
                raise
            await resp.write_eof()
            return resp
        if self.split_frames:
            joined = b"".join(frames)
            # Network reads split and join frames anywhere: 1, 5, 13, ... byte pieces.
            pos, step = 0, 1
            while pos < len(joined):
                await resp.write(joined[pos : pos + step])
                pos += step
                step = step * 2 + 3 if step < 200 else 7
                await asyncio.sleep(0)
        else:
            for frame in frames:
                await resp.write(frame)
        await resp.write_eof()
        return resp


# ---------------------------------------------------------------- helpers


def error(name: str, message: str, status: int = 400) -> web.Response:
    """An error the way Bedrock sends it: JSON message, type in `x-amzn-ErrorType`."""
    return web.json_response(
        {"message": message}, status=status,
        headers={"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


def _summary(model_id: str, provider: str, outputs: list[str], inference: list[str]) -> dict[str, Any]:
    return {"modelArn": f"arn:aws:bedrock:us-west-2::foundation-model/{model_id}", "modelId": model_id,
            "modelName": model_id, "providerName": provider, "inputModalities": ["TEXT"],
            "outputModalities": outputs, "responseStreamingSupported": True, "customizationsSupported": [],
            "inferenceTypesSupported": inference, "modelLifecycle": {"status": "ACTIVE"}}


def _profile(profile_id: str) -> dict[str, Any]:
    return {"inferenceProfileName": profile_id, "inferenceProfileId": profile_id,
            "inferenceProfileArn": f"arn:aws:bedrock:us-west-2:123456789012:inference-profile/{profile_id}",
            "models": [{"modelArn": "arn:aws:bedrock:us-west-2::foundation-model/x"}], "status": "ACTIVE",
            "type": "SYSTEM_DEFINED", "createdAt": "2025-02-24T00:00:00Z", "updatedAt": "2025-02-24T00:00:00Z"}


def _vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] / 255.0 - 0.5 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def sign_reasoning(text: str) -> str:
    return base64.b64encode(hmac.new(SIGNATURE_KEY, text.encode(), hashlib.sha256).digest()).decode()


def _last_user_text(data: dict[str, Any]) -> str:
    for msg in reversed(data.get("messages", [])):
        if msg["role"] == "user":
            return " ".join(b.get("text", "") for b in msg["content"] if "text" in b)
    return ""


def _semantic_problems(model_id: str, data: dict[str, Any]) -> list[str]:
    problems = []
    messages = data.get("messages") or []
    if not messages or messages[0]["role"] != "user":
        problems.append("A conversation must start with a user message. Try again with a conversation that "
                        "starts with a user message.")
    for a, b in itertools.pairwise(messages):
        if a["role"] == b["role"]:
            problems.append("A conversation must alternate between user and assistant roles.")
            break
    has_tools = any("toolUse" in c or "toolResult" in c for m in messages for c in m["content"])
    if has_tools and "toolConfig" not in data:
        problems.append("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    for m in messages:
        for c in m["content"]:
            if "text" in c and not c["text"].strip():
                problems.append("The text field in the ContentBlock object is blank.")
    thinking = (data.get("additionalModelRequestFields") or {}).get("thinking")
    if thinking and "anthropic.claude" in model_id:
        config = data.get("inferenceConfig") or {}
        budget = thinking.get("budget_tokens", 0)
        if budget < 1024:
            problems.append("thinking.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= config.get("maxTokens", 4096):
            problems.append("`max_tokens` must be greater than `thinking.budget_tokens`")
        if "temperature" in config or "topP" in config:
            problems.append("temperature and top_p may not be set when thinking is enabled")
        tool_choice = (data.get("toolConfig") or {}).get("toolChoice", {})
        if "any" in tool_choice or "tool" in tool_choice:
            problems.append("Thinking may not be enabled when tool_choice forces tool use.")
        last_assistant = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if last_assistant and any("toolUse" in c for c in last_assistant["content"]):
            first = last_assistant["content"][0]
            if "reasoningContent" not in first:
                problems.append("Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` "
                                "is enabled, a final `assistant` message must start with a thinking block.")
            else:
                rt = first["reasoningContent"].get("reasoningText")
                if rt and rt.get("signature") != sign_reasoning(rt["text"]):
                    problems.append("Invalid `signature` in `thinking` block")
    return problems


def _answer(model_id: str, data: dict[str, Any], markers: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    messages = data["messages"]
    last = messages[-1]
    blocks: list[dict[str, Any]] = []
    thinking = (data.get("additionalModelRequestFields") or {}).get("thinking")
    if thinking or "deepseek.r1" in model_id:
        text = "Let me think about the weather."
        rt: dict[str, Any] = {"text": text}
        if thinking:
            rt["signature"] = sign_reasoning(text)
        blocks.append({"reasoningContent": {"reasoningText": rt}})
        if "redacted" in markers:
            blocks.append({"reasoningContent": {"redactedContent": base64.b64encode(b"secret").decode()}})
    guard = data.get("guardrailConfig")
    if guard and "forbidden" in _last_user_text(data):
        return [{"text": "Sorry, the model cannot answer this question."}], "guardrail_intervened"
    results = [c["toolResult"] for c in last["content"] if "toolResult" in c]
    tools = (data.get("toolConfig") or {}).get("tools") or []
    choice = (data.get("toolConfig") or {}).get("toolChoice") or {}
    if results:
        summary = ", ".join(r["content"][0].get("text", "") for r in results)
        blocks.append({"text": f"Tool said: {summary}"})
        return blocks, "end_turn"
    if tools and (choice.get("any") is not None or choice.get("tool") or "use-tool" in markers):
        name = choice.get("tool", {}).get("name") or tools[0]["toolSpec"]["name"]
        blocks.append({"text": "Let me check."})
        blocks.append({"toolUse": {"toolUseId": "tooluse_aaa111", "name": name, "input": {"city": "Paris"}}})
        if "parallel" in markers:
            blocks.append({"toolUse": {"toolUseId": "tooluse_bbb222", "name": name, "input": {"city": "Rome"}}})
        return blocks, "tool_use"
    images = [c["image"] for m in messages for c in m["content"] if "image" in c]
    if images:
        size = len(base64.b64decode(images[-1]["source"]["bytes"]))
        blocks.append({"text": f"I see a {images[-1]['format']} image of {size} bytes."})
    else:
        blocks.append({"text": "Hello from fake Bedrock!"})
        if "slow" in markers:
            blocks.extend({"text": f"more text {i}."} for i in range(20))
    return blocks, markers.get("stop", "end_turn")


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream frame (string headers only), built from the spec."""
    hbytes = b""
    for name, value in headers.items():
        raw = value.encode()
        hbytes += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    total = 12 + len(hbytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hbytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + hbytes + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(kind: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads events with a "p" field so their sizes do not leak the content.
    body = orjson.dumps({**payload, "p": "abcdefghijklmnop"[: len(kind) % 16]})
    return encode_frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, body)


def exception_frame(kind: str, message: str) -> bytes:
    return encode_frame({":exception-type": kind, ":content-type": "application/json",
                         ":message-type": "exception"}, orjson.dumps({"message": message}))


def _stream_frames(blocks: list[dict[str, Any]], stop_reason: str, usage: dict[str, Any],
                   markers: dict[str, str]) -> list[bytes]:
    if "first-error" in markers:
        return [exception_frame(markers["first-error"], "fake failure before any event")]
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for i, block in enumerate(blocks):
        if "text" in block:
            text = block["text"]
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": i, "delta": {"text": piece}}))
        elif "toolUse" in block:
            use = block["toolUse"]
            frames.append(event_frame("contentBlockStart", {"contentBlockIndex": i, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            args = orjson.dumps(use["input"]).decode()
            for piece in (args[:5], args[5:]):
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": i,
                                                                "delta": {"toolUse": {"input": piece}}}))
        elif "reasoningContent" in block:
            rc = block["reasoningContent"]
            if "reasoningText" in rc:
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                    "reasoningContent": {"text": rc["reasoningText"]["text"]}}}))
                if "signature" in rc["reasoningText"]:
                    frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                        "reasoningContent": {"signature": rc["reasoningText"]["signature"]}}}))
            else:
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                    "reasoningContent": {"redactedContent": rc["redactedContent"]}}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": i}))
        if "stream-error" in markers and i == 0:
            frames.append(exception_frame(markers["stream-error"], "fake failure mid-stream"))
            return frames
    frames.append(event_frame("messageStop", {"stopReason": stop_reason}))
    frames.append(event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}))
    return frames
