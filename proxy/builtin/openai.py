"""`type: openai`: any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, DeepSeek, ...)."""

from __future__ import annotations

from ..config.options import Options
from ..hookspecs import hookimpl
from ..upstream.openai_compat import OpenAICompatibleProvider
from ..upstream.provider import RegisterProvider

_OPENAI_ORIGINS = ("https://api.openai.com", "https://eu.api.openai.com", "https://us.api.openai.com")


class OpenAIProvider(OpenAICompatibleProvider):
    default_base_url = "https://api.openai.com/v1"
    #: OpenAI serves /v1/responses itself; `responses: translate` for servers that do not.
    responses = "native"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        if self.base_url.lower() in _OPENAI_ORIGINS:
            # OpenAI documents its base URL with /v1; its bare origin serves no API.
            self.base_url += "/v1"
        organization = options.str("organization", None)
        project = options.str("project", None)
        if organization:
            self.extra_headers["OpenAI-Organization"] = organization
        if project:
            self.extra_headers["OpenAI-Project"] = project


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("openai", OpenAIProvider)
