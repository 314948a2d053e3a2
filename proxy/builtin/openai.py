"""`type: openai`: any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, DeepSeek, ...)."""

from __future__ import annotations

from ..config.options import Options
from ..hookspecs import hookimpl
from ..upstream.openai_compat import OpenAICompatibleProvider
from ..upstream.provider import RegisterProvider


class OpenAIProvider(OpenAICompatibleProvider):
    default_base_url = "https://api.openai.com/v1"
    #: OpenAI serves /v1/responses itself; `responses: translate` for servers that do not.
    responses = "native"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        organization = options.str("organization", None)
        project = options.str("project", None)
        if organization:
            self.extra_headers["OpenAI-Organization"] = organization
        if project:
            self.extra_headers["OpenAI-Project"] = project


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("openai", OpenAIProvider)
