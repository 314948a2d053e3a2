"""`type: vertex`: Google Vertex AI's OpenAI-compatible endpoints.

Gemini models are served at `…/endpoints/openapi/chat/completions` with model names
like `google/gemini-2.0-flash`; a model you deployed yourself (vLLM, TGI) at
`…/endpoints/{endpoint_id}/chat/completions`, chosen per route target with
`endpoint_id:`. Forwarding is the shared OpenAI-compatible one; this class supplies the
URL, a google-auth bearer token, the body Vertex accepts and the error mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

from proxy.config.options import Options
from proxy.errors import GatewayError
from proxy.types import CHAT, Call, ModelInfo, Target
from proxy.upstream.openai_compat import OpenAICompatibleProvider

from .auth import CLOUD_PLATFORM, DEFAULT_MARGIN, GoogleToken
from .errors import vertex_error
from .request import SUPPORTED, inline_images, needs_images
from .urls import ACCEPTED_FORMS, VertexBase, parse_base_url

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


def service_host(location: str) -> str:
    """Vertex's host: the `global` location has no regional prefix."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def _agreeing(options: Options, key: str, value: str, from_url: str | None) -> str:
    """`value`, unless the base_url names a different one (which of the two was meant?)."""
    if from_url is not None and value != from_url:
        raise options.error(key, f"{value!r} disagrees with the base_url, which names {from_url!r}")
    return value


class VertexProvider(OpenAICompatibleProvider):
    endpoints = frozenset({CHAT})
    supports_passthrough = False
    #: Vertex reads images only from gs:// and data: URLs: http(s) ones are fetched by default.
    fetch_images_default = True

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)  # base_url (optional: replaces https://HOST), stream_usage, ...
        if self.api_key is not None:
            raise options.error(
                "api_key", "not used by type vertex: it authenticates with Google credentials (credentials_file or ADC)"
            )
        base = None
        if self.base_url is not None:
            base = parse_base_url(self.base_url)
            if base is None:
                raise options.error("base_url", f"{ACCEPTED_FORMS}, got {self.base_url!r}")
        named = base or VertexBase("")
        project = options.str("project", named.project)
        if project is None:
            raise options.error("project", "required; expected a Google Cloud project id (or a base_url naming it)")
        self.project: str = _agreeing(options, "project", project, named.project)
        self.location: str = _agreeing(
            options, "location", options.str("location", named.location or "us-central1"), named.location
        )
        for key, value in (("project", self.project), ("location", self.location)):
            if not _NAME.match(value):
                raise options.error(
                    key, f"expected a Google Cloud {key} id (lower-case letters, digits, -), got {value!r}"
                )
        version = options.str("api_version", named.api_version or "v1beta1", choices=("v1beta1", "v1"))
        self.api_version: str = _agreeing(options, "api_version", version, named.api_version)
        #: The endpoint a route target without `endpoint_id` calls: Gemini's `openapi`,
        #: or the self-deployed endpoint a full base_url names.
        self.default_endpoint: str = named.endpoint or "openapi"
        if not _ENDPOINT_ID.match(self.default_endpoint):
            raise options.error("base_url", f"{ACCEPTED_FORMS}, got {self.base_url!r}")
        host = named.origin or service_host(self.location)
        self.endpoints_url = f"{host}/{self.api_version}/projects/{self.project}/locations/{self.location}/endpoints"

        self.tokens = GoogleToken(
            provider=name,
            credentials_file=options.str("credentials_file", None),
            scopes=options.str_list("scopes", [CLOUD_PLATFORM]),
            margin=options.number("refresh_margin", DEFAULT_MARGIN),
            timeout=options.number("token_timeout", 30.0, minimum=0.1),
            settings=self.upstream.settings,
        )

        self.keep_params = frozenset(options.str_list("keep_params", []))
        self.fetch_images: bool = self.upstream.images.enabled

    def target_options(self, opts: Options) -> dict[str, object]:
        raw = opts.raw("endpoint_id")
        if raw is None:
            return {}
        value = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(value, str) or not _ENDPOINT_ID.match(value):
            raise opts.error("endpoint_id", "expected a Vertex AI endpoint id (digits, letters, - or _)")
        return {"endpoint_id": value}

    # -------------------------------------------------------------- extension points

    def url_for(self, call: Call, target: Target) -> str:
        endpoint = target.options.get("endpoint_id") or self.default_endpoint
        return f"{self.endpoints_url}/{endpoint}/{call.path}"

    async def auth_headers(self, target: Target | None) -> Mapping[str, str]:
        return {"Authorization": "Bearer " + await self.tokens.token()}

    async def refresh_credentials(self) -> bool:
        try:
            return await self.tokens.refresh()
        except GatewayError:
            return False  # already logged; the 401 stands

    async def body_for(self, call: Call, target: Target) -> bytes:
        body = call.body
        if body is None:
            return call.raw_body
        overrides: dict[str, object] = {}
        if call.stream and self.stream_usage and not call.include_usage:
            opts = body.get("stream_options")
            overrides["stream_options"] = (
                {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
            )
        messages = body.get("messages")
        if needs_images(messages, self.fetch_images):
            overrides["messages"] = await inline_images(
                messages,  # type: ignore[arg-type]  # needs_images checked it is a list
                self.upstream.fetch_images if self.fetch_images else None,
            )
        dropped = [k for k in body if k not in SUPPORTED and k not in self.keep_params]
        if not dropped:
            return call.upstream_body(target, **overrides)
        out = {k: v for k, v in body.items() if k not in dropped}
        out["model"] = target.model
        out.update(target.body_extra)
        out.update(overrides)
        return orjson.dumps(out)

    def error_for(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        return vertex_error(self.name, self.project, status, body, headers)

    async def list_models(self) -> list[ModelInfo] | None:
        return None  # Vertex's OpenAI endpoint has no model listing; /v1/models shows the routes
