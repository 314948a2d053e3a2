"""`type: bedrock`: the OpenAI API translated to Bedrock Converse, ConverseStream and InvokeModel.

Runtime calls go out through the core's `Upstream` seam (`self.upstream`: the lean
keep-alive client by default, `transport: aiohttp` on request) with orjson bodies and a
botocore SigV4 signature; aiobotocore is kept for what it is good at and is not on the
hot path: credentials and the control-plane listing, which use the same egress proxy
and TLS settings. Image URLs are fetched (`fetch_images: true`) under the seam's shared
image policy.
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
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from proxy.config.options import Options
from proxy.errors import InvalidRequest, UpstreamError
from proxy.types import CHAT, EMBEDDINGS, Call, ModelInfo, Reply, Target
from proxy.upstream.cache import TTLCache
from proxy.upstream.provider import Provider
from proxy.upstream.proxies import proxy_for
from proxy.upstream.seam import Upstream
from proxy.upstream.sse import DONE
from proxy.upstream.transport import Response

from .auth import AwsAuth, AwsSettings, model_path
from .embeddings import embed
from .endpoints import resolve_region, runtime_root
from .errors import error_from_frame, error_from_response
from .eventstream import EventStreamDecoder, EventStreamError
from .models import fetch_models
from .request_map import map_chat
from .response_map import chat_completion
from .stream_map import ChatStreamMapper

log = logging.getLogger("relaygate.bedrock")
_JSON = "application/json"
_EVENTSTREAM = "application/vnd.amazon.eventstream"
#: W3C trace context headers the tracing wrapper puts on an attempt (proxy.telemetry.tracing).
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class BedrockProvider(Provider):
    endpoints = frozenset({CHAT, EMBEDDINGS})
    supports_guardrails = True

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self.upstream = Upstream(name, options, images_default=False)
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
        self.aws = AwsAuth(AwsSettings.from_options(options, region), self._botocore_config)
        self.fetch_images: bool = self.upstream.images.enabled
        self.models: TTLCache[list[ModelInfo]] = TTLCache(
            options.number("models_ttl", 600.0),
            [],
            what=f"provider {name}: Bedrock model listing",
            errors=(TimeoutError, BotoCoreError, ClientError, OSError),
        )
        self._control: Any = None
        self._control_lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.upstream.start()
        await self.aws.start()

    async def close(self) -> None:
        await self._stack.aclose()
        self._control = None
        await self.upstream.close()

    def _botocore_config(self, url: str, **kwargs: Any) -> dict[str, Any]:
        """`create_client` arguments that send aiobotocore's calls (control plane, STS) the
        way the runtime calls go: the provider's egress proxy and TLS settings."""
        s = self.upstream.settings
        proxy = proxy_for(URL(url), s.proxies, s.no_proxy)
        tls = self.upstream.tls
        cert: str | tuple[str, str] | None = None
        if tls is not None and tls.client_cert:
            cert = (tls.client_cert, tls.client_key) if tls.client_key else tls.client_cert
        config = AioConfig(
            proxies={"https": str(proxy), "http": str(proxy)} if proxy is not None else {},
            client_cert=cert,
            **kwargs,
        )
        verify: bool | str = True
        if tls is not None:
            verify = tls.ca_file or tls.verify
        return {"config": config, "verify": verify}

    async def _control_client(self) -> Any:
        """The control-plane client, made on first use: it costs start-up time most never need."""
        async with self._control_lock:
            if self._control is None:
                assert self.aws.session is not None
                retries = {"max_attempts": 2, "mode": "standard"}
                url = self.control_endpoint or f"https://bedrock.{self.region}.amazonaws.com"
                kwargs = self._botocore_config(
                    url, connect_timeout=self.upstream.settings.connect_timeout, read_timeout=30, retries=retries
                )
                self._control = await self._stack.enter_async_context(
                    self.aws.session.create_client(
                        "bedrock", region_name=self.region, endpoint_url=self.control_endpoint, **kwargs
                    )
                )
            return self._control

    async def list_models(self) -> list[ModelInfo] | None:
        return await self.models.get(self._fetch_models)

    async def _fetch_models(self) -> list[ModelInfo]:
        return await fetch_models(await self._control_client())

    # -------------------------------------------------------------- transport

    async def _post(
        self, model: str, operation: str, body: bytes, accept: str, target: Target | None = None
    ) -> Response:
        url = self.endpoint + model_path(model, operation)
        headers = await self.aws.sign(url, body, {"Content-Type": _JSON, "Accept": accept})
        headers["Accept-Encoding"] = "identity"
        if target is not None:  # the attempt's trace context (unsigned, as SigV4 allows)
            headers.update({k: v for k, v in target.headers.items() if k in _TRACE_HEADERS})
        upstream = self.upstream
        resp = await upstream.request("POST", url, headers.items(), body)
        if resp.status >= 400:
            err = error_from_response(self.name, resp.status, await upstream.error_body(resp), resp.headers)
            raise upstream.finish_error(err, resp.headers, self.aws.secrets())
        return resp

    async def _post_json(self, model: str, operation: str, body: bytes, target: Target | None = None) -> dict[str, Any]:
        resp = await self._post(model, operation, body, _JSON, target)
        data = await self.upstream.read_body(resp)
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
            data, usage = await embed(body, target.model, lambda b: self._post_json(target.model, "invoke", b, target))
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
            resp = await self._post(target.model, "converse-stream", payload, _EVENTSTREAM, target)
            mapper = ChatStreamMapper(target.model, call.include_usage)
            return Reply(stream=self._relay(call, resp, mapper), content_type="text/event-stream")
        answer = await self._post_json(target.model, "converse", payload, target)
        out, call.usage = chat_completion(answer, target.model)
        return Reply(body=out)

    async def _fill_images(self, holes: list[tuple[dict[str, Any], str]]) -> None:
        """Each distinct URL fetched once (count-capped), its bytes shared by every block naming it."""
        fetched = await self.upstream.fetch_images(url for _, url in holes)
        encoded: dict[str, str] = {}
        for block, url in holes:
            data, media_type = fetched[url]
            if url not in encoded:
                encoded[url] = base64.b64encode(data).decode()
            block["format"] = media_type[6:]
            block["source"] = {"bytes": encoded[url]}

    async def _relay(
        self, call: Call, resp: Response, mapper: ChatStreamMapper
    ) -> AsyncGenerator[bytes, None]:
        """Decode frames as bytes arrive; an exception frame becomes a raised domain error.

        Nothing is yielded before the first real event, so an error frame that comes
        first raises before the first chunk and the core can still fall back.
        """
        decoder = EventStreamDecoder()
        chunks = self.upstream.chunks(resp)
        try:
            async for data in chunks:
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
            yield DONE
        except (EventStreamError, orjson.JSONDecodeError) as exc:
            raise UpstreamError(f"provider {self.name!r}: Bedrock sent a malformed event stream") from exc
        finally:
            await chunks.aclose()
