"""`type: azure`: Azure OpenAI, through the shared OpenAI-compatible forwarding.

Only what differs from OpenAI is here: the URL (a deployment in the path plus
`api-version`, or Azure's `/openai/v1` API with the deployment as the body's `model`),
the credential header (`api-key`, or an Entra ID bearer token), the stream filter and
the error mapping. A route target's `model:` is the deployment name.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from proxy.config.options import Options
from proxy.errors import GatewayError
from proxy.types import CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH, Call, ModelInfo, Target
from proxy.upstream.openai_compat import OpenAICompatibleProvider, StreamFilter

from .auth import EntraToken
from .errors import azure_error
from .stream import AzureStreamFixer

_OPENAI_SUFFIX = re.compile(r"/openai(/v1)?/?$")
ENDPOINT_FORMS = (
    "expected the resource endpoint as Azure shows it: https://RESOURCE.openai.azure.com "
    "(or .cognitiveservices.azure.com, .services.ai.azure.com), optionally followed by /openai or /openai/v1; "
    "a deployment goes in a route target's model, and api_version in its own key"
)


def _api_version(options: Options) -> str | None:
    """`api_version`, also when YAML read an unquoted 2024-10-21 as a date."""
    raw = options.raw("api_version")
    if isinstance(raw, _dt.date):
        return raw.isoformat()
    value: str | None = options.str("api_version", None)
    if value is not None and not value.strip():
        raise options.error("api_version", 'expected an Azure OpenAI API version such as "2024-10-21"')
    return value


class AzureProvider(OpenAICompatibleProvider):
    endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})
    supports_passthrough = False

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)  # base_url (optional here), api_key, headers, stream_usage, ...
        endpoint = options.url("endpoint", None)
        if (endpoint is None) == (self.base_url is None):
            raise options.error(
                "endpoint",
                "expected exactly one of endpoint (https://RESOURCE.openai.azure.com) or base_url",
            )
        given = endpoint or self.base_url
        suffix = _OPENAI_SUFFIX.search(given)
        parts = urlsplit(given)
        if parts.query or parts.fragment or (endpoint is not None and not suffix and parts.path not in ("", "/")):
            raise options.error("endpoint" if endpoint else "base_url", f"{ENDPOINT_FORMS}, got {given!r}")
        #: The resource root, without `/openai`: the paths below are appended to it.
        self.root: str = _OPENAI_SUFFIX.sub("", given)
        self.base_url = self.root
        # Azure's v1 guide hands OpenAI clients `{endpoint}/openai/v1/`: that URL means the v1 API.
        v1_url = suffix is not None and suffix.group(1) is not None
        self.api_mode: str = options.str("api_mode", "v1" if v1_url else "classic", choices=("classic", "v1"))
        self.api_version: str | None = _api_version(options)
        if self.api_mode == "classic" and self.api_version is None:
            raise options.error(
                "api_version",
                'required with api_mode: classic; expected an Azure OpenAI API version such as "2024-10-21"',
            )
        self.prompt_filter_results: str = options.str("prompt_filter_results", "drop", choices=("drop", "merge"))
        self.tokens = EntraToken.from_options(name, options)
        if self.tokens is not None and self.api_key is not None:
            raise options.error("api_key", "expected either api_key or an Entra ID token (ad_token*), not both")
        if self.tokens is None and self.api_key is None:
            raise options.error("api_key", "required; expected api_key, ad_token, ad_token_command or ad_token_file")
        if self.api_mode == "v1":
            # Azure's v1 API is OpenAI's own surface: other /v1/* routes can go through as they are.
            # Instance overrides of the class defaults (the core reads them per instance).
            self.endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, PASSTHROUGH})
            self.supports_passthrough = True
            if options.raw("responses") is None:  # Azure's v1 API serves /openai/v1/responses
                self.responses = "native"

    # -------------------------------------------------------------- extension points

    def url_for(self, call: Call, target: Target) -> str:
        if self.api_mode == "v1":
            url = f"{self.root}/openai/v1/{call.path}"
            query = [call.query_string] if call.query_string and call.endpoint == PASSTHROUGH else []
        else:
            deployment = quote(target.model, safe="")
            url = f"{self.root}/openai/deployments/{deployment}/{call.path}"
            query = []
        if self.api_version is not None:
            query.append("api-version=" + quote(self.api_version, safe=""))
        return f"{url}?{'&'.join(query)}" if query else url

    async def auth_headers(self, target: Target | None) -> Mapping[str, str]:
        if self.tokens is not None:
            return {"Authorization": "Bearer " + await self.tokens.token()}
        assert self.api_key is not None  # checked in __init__
        return {"api-key": self.api_key}

    async def refresh_credentials(self) -> bool:
        if self.tokens is None:
            return False
        try:
            return await self.tokens.refresh()
        except GatewayError:
            return False  # already logged; the 401 stands

    def stream_filter(self, call: Call, target: Target) -> StreamFilter | None:
        if call.endpoint == CHAT:
            return AzureStreamFixer(merge=self.prompt_filter_results == "merge", object_name="chat.completion.chunk")
        if call.endpoint == COMPLETIONS:
            return AzureStreamFixer(merge=self.prompt_filter_results == "merge", object_name="text_completion")
        return None

    def error_for(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        return azure_error(self.name, status, body, headers)

    async def list_models(self) -> list[ModelInfo] | None:
        # Deployments are listed only through the Azure management API (another
        # credential and scope); `/v1/models` shows the configured routes instead.
        return None
