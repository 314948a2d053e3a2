"""`type: bedrock-openai`: Bedrock's own OpenAI-compatible endpoint, forwarded untouched.

Everything but the URL and the credential is the generic OpenAI-compatible forwarder;
route guardrails are rendered as Bedrock's headers and body field by the plugin's
`inject_guardrails` hook.
"""

from __future__ import annotations

from proxy.config.options import Options
from proxy.upstream.openai_compat import OpenAICompatibleProvider

from .endpoints import openai_base, resolve_region

API_KEY_ENV = "AWS_BEARER_TOKEN_BEDROCK"


class BedrockOpenAIProvider(OpenAICompatibleProvider):
    supports_guardrails = True
    # Translated onto chat/completions, which every Bedrock OpenAI endpoint serves; the
    # Responses API itself only some endpoints have (Mantle): `responses: native` there.
    responses = "translate"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        endpoint = options.url("endpoint_url", None)
        if endpoint and self.base_url and endpoint != self.base_url:
            raise options.error("base_url", "give endpoint_url or base_url, not both")
        url = self.base_url or endpoint
        if url is not None:
            # With or without /openai/v1, as AWS's guides write it for SDKs or for OpenAI clients.
            self.base_url = openai_base(url)
            options.str("region", None)  # the URL says where; a region is not needed to call it
        else:
            region = resolve_region(options, None, required=True)
            self.base_url = f"https://bedrock-runtime.{region}.amazonaws.com/openai/v1"
        if self.api_key is None:
            self.api_key = options.secret("api_key", env=API_KEY_ENV)
        if not self.api_key:
            raise options.error("api_key", f"required (a Bedrock API key), or set {API_KEY_ENV}")
