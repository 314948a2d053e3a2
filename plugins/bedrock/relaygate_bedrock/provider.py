"""`type: bedrock`: the OpenAI API translated to Bedrock Converse, ConverseStream and InvokeModel.

Runtime calls go out on the core's lean keep-alive client (`self.http`) with orjson
bodies and a botocore SigV4 signature; aiobotocore is kept for what it is good at and is
not on the hot path: credentials and the control-plane listing. An aiohttp session is
opened only for `fetch_images` (the core's SSRF-guarded fetcher runs on aiohttp).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from aiobotocore.config import AioConfig

from proxy.config.options import Options
from proxy.errors import InvalidRequest, UpstreamError
from proxy.types import CHAT, EMBEDDINGS, Call, ModelInfo, Reply, Target
from proxy.upstream.images import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, fetch_image
from proxy.upstream.lean import Response
from proxy.upstream.provider import TRANSPORT_ERRORS, Provider
from proxy.upstream.sse import DONE

from .auth import AwsAuth, AwsSettings, model_path
from .embeddings import embed
from .endpoints import resolve_region, runtime_root
from .errors import error_from_frame, error_from_response
from .eventstream import EventStreamDecoder, EventStreamError
from .models import ModelCache
from .request_map import map_chat
from .response_map import chat_completion
from .stream_map import ChatStreamMapper

log = logging.getLogger("relaygate.bedrock")
_JSON = "application/json"
_EVENTSTREAM = "application/vnd.amazon.eventstream"


class BedrockProvider(Provider):
    endpoints = frozenset({CHAT, EMBEDDINGS})
    supports_guardrails = True
    uses_http = True

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        endpoint = options.url("endpoint_url", None)
        base = options.url("base_url", None)
        if endpoint and base and endpoint != base:
            raise options.error("base_url", "give endpoint_url or base_url, not both")
        url = endpoint or base
        region = resolve_region(options, url, required=True)
        assert region is not None
        self.region: str = region
        # Converse paths hang off the runtime's root, whatever OpenAI base path was copied in.
        self.endpoint: str = runtime_root(url) if url else f"https://bedrock-runtime.{region}.amazonaws.com"
        self.control_endpoint: str | None = options.url("control_endpoint_url", None)
        self.aws = AwsAuth(AwsSettings.from_options(options, region))
        self.fetch_images: bool = options.bool("fetch_images", False)
        self.uses_session = self.fetch_images
        fetch = options.block("image_fetch")
        self.image_max_bytes: int = fetch.int("max_bytes", DEFAULT_MAX_BYTES, minimum=1)
        self.image_timeout: float = fetch.number("timeout", DEFAULT_TIMEOUT)
        #: Fetch from private addresses too (tests, or images served inside your own network).
        self.image_allow_private: bool = fetch.bool("allow_private", False)
        fetch.check_unused()
        self.models = ModelCache(name, options.number("models_ttl", 600.0))
        self._control: Any = None
        self._control_lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.aws.start()
        await super().start()

    async def close(self) -> None:
        await self._stack.aclose()
        self._control = None
        await super().close()

    async def _control_client(self) -> Any:
        """The control-plane client, made on first use: it costs start-up time most never need."""
        async with self._control_lock:
            if self._control is None:
                assert self.aws.session is not None
                retries = {"max_attempts": 2, "mode": "standard"}
                config = AioConfig(connect_timeout=self.connect_timeout, read_timeout=30, retries=retries)
                self._control = await self._stack.enter_async_context(
                    self.aws.session.create_client(
                        "bedrock", region_name=self.region, endpoint_url=self.control_endpoint, config=config
                    )
                )
            return self._control

    async def list_models(self) -> list[ModelInfo] | None:
        return await self.models.get(self._control_client)

    # -------------------------------------------------------------- transport

    async def _post(self, model: str, operation: str, body: bytes, accept: str) -> Response:
        url = self.endpoint + model_path(model, operation)
        headers = await self.aws.sign(url, body, {"Content-Type": _JSON, "Accept": accept})
        headers["Accept-Encoding"] = "identity"
        resp = await self.request("POST", url, headers.items(), body)
        if resp.status >= 400:
            raise error_from_response(self.name, resp.status, await self.error_body(resp), resp.headers)
        return resp

    async def _post_json(self, model: str, operation: str, body: bytes) -> dict[str, Any]:
        resp = await self._post(model, operation, body, _JSON)
        data = await self.read_body(resp)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name!r}: Bedrock sent a body that is not JSON") from exc
        if not isinstance(parsed, dict):
            raise UpstreamError(f"provider {self.name!r}: Bedrock sent an unexpected body")
        return parsed

    # -------------------------------------------------------------- sending

    async def send(self, call: Call, target: Target) -> Reply:
        body = call.body or {}
        if call.endpoint == EMBEDDINGS:
            data, usage = await embed(body, target.model, lambda b: self._post_json(target.model, "invoke", b))
            call.usage = usage
            return Reply(body=data)
        if call.endpoint != CHAT:
            raise InvalidRequest(f"provider {self.name!r} (Bedrock) does not serve {call.endpoint}")
        mapped = map_chat(
            body, target.model, stream=call.stream, guardrail=target.guardrail, fetch_images=self.fetch_images
        )
        if mapped.image_urls:
            await self._fill_images(mapped.image_urls)
        payload = orjson.dumps(mapped.body)
        if call.stream:
            resp = await self._post(target.model, "converse-stream", payload, _EVENTSTREAM)
            mapper = ChatStreamMapper(target.model, call.include_usage)
            return Reply(stream=self._relay(call, resp, mapper), content_type="text/event-stream")
        answer = await self._post_json(target.model, "converse", payload)
        out, call.usage = chat_completion(answer, target.model)
        return Reply(body=out)

    async def _fill_images(self, holes: list[tuple[dict[str, Any], str]]) -> None:
        async def one(block: dict[str, Any], url: str) -> None:
            data, media_type = await fetch_image(
                self.session,
                url,
                max_bytes=self.image_max_bytes,
                timeout=self.image_timeout,
                allow_private=self.image_allow_private,
            )
            block["format"] = media_type[6:]
            block["source"] = {"bytes": base64.b64encode(data).decode()}

        await asyncio.gather(*(one(block, url) for block, url in holes))

    async def _relay(
        self, call: Call, resp: Response, mapper: ChatStreamMapper
    ) -> AsyncGenerator[bytes, None]:
        """Decode frames as bytes arrive; an exception frame becomes a raised domain error.

        Nothing is yielded before the first real event, so an error frame that comes
        first raises before the first chunk and the core can still fall back.
        """
        decoder = EventStreamDecoder()
        ok = False
        try:
            async for data in resp.iter_chunks():
                out: list[bytes] = []
                for headers, payload in decoder.feed(data):
                    if headers.get(":message-type") != "event":
                        if out:  # what came before the failure still reaches the client
                            yield b"".join(out)
                        raise error_from_frame(self.name, headers, payload)
                    kind = headers.get(":event-type")
                    chunk = mapper.event(kind, payload) if isinstance(kind, str) else b""
                    if chunk:
                        out.append(chunk)
                if mapper.usage is not None:
                    call.usage = mapper.usage
                if out:
                    yield b"".join(out) if len(out) > 1 else out[0]
            if decoder.pending:
                raise UpstreamError(
                    f"provider {self.name!r}: Bedrock's stream was cut mid-frame", code="incomplete_stream"
                )
            mapper.check_complete()
            ok = True
            yield DONE
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc) from exc
        except (EventStreamError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"provider {self.name!r}: Bedrock sent a malformed event stream") from exc
        finally:
            resp.release() if ok else resp.close()
