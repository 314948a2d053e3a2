"""The fate of every field of the spec's `CreateResponse` when the target translates.

Each field is mapped onto the chat request, accepted and ignored (only where ignoring it
cannot change what the client gets), or refused with a 400 naming it. A field the spec
does not have is refused as OpenAI refuses it. docs/responses.md has the same table.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest

#: Mapped onto the chat request, or handled by the gateway itself.
MAPPED = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
        "temperature", "top_p", "text", "reasoning", "metadata", "user", "store", "previous_response_id",
        "stream", "stream_options", "include",
    }
)  # fmt: skip

#: Accepted and ignored: they tune OpenAI's service (caching, tiers, abuse detection) or
#: limit built-in tools, which a translated request cannot carry; echoed in the Response.
IGNORED = frozenset(
    {
        "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "safety_identifier",
        "max_tool_calls",
    }
)  # fmt: skip

#: Accepted at their default; any other value would change the answer, so it is a 400.
_DEFAULTS: dict[str, tuple[tuple[Any, ...], str]] = {
    "background": ((None, False), "background responses are not available on translated providers"),
    "conversation": ((None,), "conversations are not available on translated providers; use previous_response_id"),
    "prompt": ((None,), "prompt templates are stored by OpenAI and are not available on translated providers"),
    "moderation": ((None,), "moderation results are not available on translated providers"),
    "context_management": ((None,), "server-side compaction is not available on translated providers"),
    "truncation": ((None, "disabled"), "only truncation 'disabled' is available on translated providers"),
    "top_logprobs": ((None, 0), "log probabilities are not available on translated providers"),
}

#: `include` values: those about built-in tools' results are moot (such tools are refused);
#: output logprobs would change the answer.
INCLUDE_OK = frozenset(
    {
        "reasoning.encrypted_content", "message.input_image.image_url", "file_search_call.results",
        "web_search_call.results", "web_search_call.action.sources", "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)  # fmt: skip


def bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    got = "null" if value is None else type(value).__name__
    return bad(f"Invalid type for '{param}': expected {expected}, but got {got}.", param, "invalid_type")


def check_fields(body: dict[str, Any]) -> None:
    """Refuse what a translated request cannot honour; a 400 names the field."""
    for key, value in body.items():
        if key in MAPPED or key in IGNORED:
            continue
        rule = _DEFAULTS.get(key)
        if rule is None:
            raise bad(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
        allowed, why = rule
        if value is not None and (value not in allowed or type(value) is not type(allowed[-1])):
            raise bad(f"Unsupported value for '{key}': {why}.", key, "unsupported_parameter")
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise type_error("include", "an array", include)
        for i, value in enumerate(include):
            if value not in INCLUDE_OK:
                raise bad(
                    f"Unsupported value for 'include[{i}]': {value!r} is not available on translated providers.",
                    f"include[{i}]",
                    "unsupported_parameter",
                )
