"""A Responses request → the chat request a translating provider is sent.

Pure and synchronous: the conversation (stored context plus this input, references
resolved) is handed in. Every field is mapped here or has its fate in `fields`.
"""

from __future__ import annotations

from typing import Any

from .fields import bad, check_fields, type_error
from .items import to_messages

#: Tool types only OpenAI runs (or that a chat request cannot carry): refused when translating.
_TOOL_NAMES = {
    "web_search": "web search", "web_search_2025_08_26": "web search", "web_search_preview": "web search",
    "web_search_preview_2025_03_11": "web search", "file_search": "file search", "code_interpreter": "code interpreter",
    "computer": "computer use", "computer_use": "computer use", "computer_use_preview": "computer use",
    "image_generation": "image generation", "mcp": "remote MCP", "local_shell": "local shell", "shell": "shell",
    "apply_patch": "apply patch", "custom": "custom (free-form)", "namespace": "namespace",
    "tool_search": "tool search",
    "programmatic_tool_calling": "programmatic tool calling",
}  # fmt: skip


def builtin_tool(body: dict[str, Any]) -> tuple[str, str] | None:
    """(param, type) of the first tool a translated request cannot carry, if any."""
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            return f"tools[{i}]", str(kind)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "allowed_tools"):
        return "tool_choice", str(choice.get("type"))
    return None


def refuse_tool(param: str, kind: str) -> Exception:
    name = _TOOL_NAMES.get(kind, kind)
    return bad(
        f"The tool '{kind}' ({name}) at '{param}' is built into OpenAI's Responses API and cannot run on this "
        "model's provider, which the gateway translates onto chat completions; use function tools.",
        param,
        "unsupported_tool",
    )


def _function_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise type_error(f"{param}.name", "a non-empty string", name)
    fn: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        fn["description"] = tool["description"]
    params = tool.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise type_error(f"{param}.parameters", "an object", params)
        fn["parameters"] = params
    if isinstance(tool.get("strict"), bool):
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """(chat tools, chat tool_choice)."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise type_error("tools", "an array", tools)
    out = []
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict):
            raise type_error(f"tools[{i}]", "an object", tool)
        if tool.get("type") != "function":
            raise refuse_tool(f"tools[{i}]", str(tool.get("type")))
        out.append(_function_tool(tool, f"tools[{i}]"))
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return out, choice
    if not isinstance(choice, dict):
        raise bad(f"Invalid value for 'tool_choice': {choice!r}.", "tool_choice")
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise type_error("tool_choice.name", "a string", name)
        return out, {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        # Offering only the allowed tools means the same to the model, on any provider.
        allowed = choice.get("tools")
        mode = choice.get("mode")
        if not isinstance(allowed, list) or mode not in ("auto", "required"):
            raise bad("Invalid 'tool_choice': allowed_tools takes mode (auto or required) and tools.", "tool_choice")
        names = {t.get("name") for t in allowed if isinstance(t, dict) and t.get("type") == "function"}
        return [t for t in out if t["function"]["name"] in names], mode
    raise refuse_tool("tool_choice", str(kind))


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise type_error("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        name = fmt.get("name")
        if not isinstance(schema, dict):
            raise type_error("text.format.schema", "an object", schema)
        if not isinstance(name, str):
            raise type_error("text.format.name", "a string", name)
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise bad(f"Invalid value for 'text.format.type': {kind!r}; expected text, json_schema or json_object.",
              "text.format.type")  # fmt: skip


def check_request(body: dict[str, Any]) -> None:
    """What every translated target refuses, checked once before the first one is tried."""
    check_fields(body)
    for key in ("instructions", "previous_response_id", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise type_error(key, "a string", body[key])
    mot = body.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 1):
        raise bad("Invalid 'max_output_tokens': expected a positive integer.", "max_output_tokens")
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise type_error("metadata", "an object of strings", metadata)
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise type_error("reasoning", "an object", reasoning)
    for key in ("parallel_tool_calls", "store"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise type_error(key, "a boolean", body[key])


def chat_request(body: dict[str, Any], items: list[dict[str, Any]], first_input: int) -> dict[str, Any]:
    """The chat body for a checked request and its whole conversation (`items`)."""
    messages = to_messages(items, body.get("instructions"), first_input)
    if not messages:
        raise bad("The request has no input to answer.", "input", "missing_required_parameter")
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    tools, choice = _tools(body)
    if tools:
        out["tools"] = tools
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if choice is not None and tools:
        out["tool_choice"] = choice
    for key in ("temperature", "top_p", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    text = body.get("text")
    if isinstance(text, dict) and text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
