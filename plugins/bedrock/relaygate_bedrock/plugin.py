"""relaygate hooks of the Bedrock plugin: the two provider types and Bedrock guardrails."""

from __future__ import annotations

from proxy import RegisterProvider
from proxy.hookspecs import hookimpl
from proxy.types import Call, Target

from .openai_endpoint import BedrockOpenAIProvider
from .request_map import GUARDRAIL_FIELD


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    # `type: bedrock` by reference: aiobotocore is imported only where a config uses it.
    register("bedrock", "relaygate_bedrock.provider:BedrockProvider")
    register("bedrock-openai", BedrockOpenAIProvider)


@hookimpl
def inject_guardrails(call: Call, target: Target) -> None:
    """Render a route's guardrail for Bedrock's OpenAI endpoint; the client cannot override it.

    `type: bedrock` reads `target.guardrail` itself (Converse `guardrailConfig`).
    Client headers never travel upstream, so only the body field needs removing.
    """
    guardrail = target.guardrail
    if guardrail is None or not isinstance(target.provider, BedrockOpenAIProvider):
        return
    target.headers["X-Amzn-Bedrock-GuardrailIdentifier"] = guardrail.id
    target.headers["X-Amzn-Bedrock-GuardrailVersion"] = guardrail.version
    if guardrail.trace:
        # The header takes AWS's upper-case ENABLED | DISABLED | ENABLED_FULL; Converse's
        # guardrailConfig.trace (request_map) the lower-case one the config holds.
        target.headers["X-Amzn-Bedrock-Trace"] = guardrail.trace.upper()
    if guardrail.tag_suffix:
        target.body_extra[GUARDRAIL_FIELD] = {"tagSuffix": guardrail.tag_suffix}
    elif call.body is not None and GUARDRAIL_FIELD in call.body:
        call.edit_body().pop(GUARDRAIL_FIELD, None)
