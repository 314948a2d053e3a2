"""`type: openai`: any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, DeepSeek, ...)."""

from __future__ import annotations

from collections.abc import Callable

from ..hookspecs import hookimpl
from ..openai_compat import OpenAICompatibleProvider
from ..provider import Provider


class OpenAIProvider(OpenAICompatibleProvider):
    default_base_url = "https://api.openai.com/v1"


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("openai", OpenAIProvider)
