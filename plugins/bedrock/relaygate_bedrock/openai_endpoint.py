"""`type: bedrock-openai`: Bedrock's own OpenAI-compatible endpoint, forwarded untouched.

Everything but the URL and the credential is the generic OpenAI-compatible forwarder;
route guardrails are rendered as Bedrock's headers and body field by the plugin's
`inject_guardrails` hook.
"""

from __future__ import annotations

from proxy.config.options import Options
from proxy.upstream.openai_compat import OpenAICompatibleProvider

API_KEY_ENV = "AWS_BEARER_TOKEN_BEDROCK"


class BedrockOpenAIProvider(OpenAICompatibleProvider):
    supports_guardrails = True
    responses = "native"  # Bedrock's OpenAI endpoint serves /v1/responses

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        region = options.str("region", None)
        if self.base_url is None:
            if not region:
                raise options.error("region", "required unless base_url is given")
            self.base_url = f"https://bedrock-runtime.{region}.amazonaws.com/openai/v1"
        if self.api_key is None:
            self.api_key = options.secret("api_key", env=API_KEY_ENV)
        if not self.api_key:
            raise options.error("api_key", f"required (a Bedrock API key), or set {API_KEY_ENV}")
