"""OpenAI chat request → Bedrock Converse / ConverseStream request body.

Pure and synchronous: image URLs that the gateway must fetch are returned as holes
(`Mapped.image_urls`) for the provider to fill concurrently, so this module can be
tested without a network. Every OpenAI parameter is either mapped, dropped on purpose
(`DROPPED`) or refused with a 400 (`REFUSED`); the README's table is the same list.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.errors import InvalidRequest
from proxy.types import Guardrail
from proxy.upstream.images import sniff_image

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
GUARDRAIL_FIELD = "amazon-bedrock-guardrailConfig"

#: OpenAI parameters with no Converse equivalent that are safe to ignore.
DROPPED = frozenset(
    {
        "seed", "user", "presence_penalty", "frequency_penalty", "logit_bias", "service_tier", "store",
        "metadata", "parallel_tool_calls", "stream_options", "prediction", "modalities", "verbosity",
        "prompt_cache_key", "safety_identifier", "web_search_options", GUARDRAIL_FIELD,
    }
)
#: OpenAI parameters we refuse rather than silently change the answer's meaning.
REFUSED = {
    "functions": "the legacy 'functions' parameter is not supported on Bedrock; use 'tools'",
    "function_call": "the legacy 'function_call' parameter is not supported on Bedrock; use 'tool_choice'",
    "audio": "audio output is not supported on Bedrock Converse",
}

#: reasoning_effort → Claude extended-thinking budget (tokens).
THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
DEFAULT_ANSWER_TOKENS = 4096
_MIN_BUDGET = 1024
_HISTORY_TOOL = "(tool from the conversation history)"
_IMAGE_PREFIX = re.compile(r"^data:image/([a-zA-Z0-9.+-]+)?(;[^,]*)?,")


def model_family(model_id: str) -> str:
    """'claude', 'deepseek-r1', 'gpt-oss' or 'other', from a model id or profile id."""
    mid = model_id.lower()
    if "anthropic.claude" in mid:
        return "claude"
    if "deepseek.r1" in mid:
        return "deepseek-r1"
    if "openai.gpt-oss" in mid:
        return "gpt-oss"
    return "other"


@dataclass(slots=True)
class Mapped:
    body: dict[str, Any]
    #: (image block to complete, URL) for each http(s) image the provider must fetch.
    image_urls: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    thinking: bool = False


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


# ---------------------------------------------------------------- content


def _text_of(content: Any, param: str, allowed: tuple[str, ...] = ("text",)) -> str:
    """String content, or the joined text of text parts (system, developer, tool)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"Invalid type for '{param}': expected a string or an array of parts.", param, "invalid_type")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise _bad(f"Invalid content part type {kind!r} at '{param}[{j}]'; expected text.", f"{param}[{j}]")
        value = part.get("text") if kind == "text" else part.get("refusal")
        if not isinstance(value, str):
            raise _bad(f"Missing text in '{param}[{j}]'.", f"{param}[{j}]", "invalid_type")
        texts.append(value)
    return "\n".join(texts)


def _image_block(part: dict[str, Any], param: str, fetch_images: bool, holes: list[tuple[dict[str, Any], str]]
                 ) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise _bad(f"Missing image URL at '{param}'.", param, "invalid_type")
    if url.startswith("data:"):
        m = _IMAGE_PREFIX.match(url)
        if not m or not (m.group(2) or "").endswith("base64"):
            raise _bad(f"Invalid image data URL at '{param}': expected data:image/<type>;base64,<data>.", param)
        data = url[m.end():].strip()
        try:  # decode just enough to sniff the format; Bedrock takes the base64 text as it is
            head = base64.b64decode(data[:24], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"Invalid base64 image data at '{param}'.", param) from exc
        media_type = sniff_image(head)
        if media_type is None:
            raise _bad(f"Unsupported image at '{param}': Bedrock takes PNG, JPEG, GIF or WebP.", param,
                       "invalid_image_format")
        return {"image": {"format": media_type[6:], "source": {"bytes": data}}}
    if url.startswith(("http://", "https://")):
        if not fetch_images:
            raise _bad(
                f"Image URLs are not fetched by this gateway ('{param}'); send the image as a "
                "data:image/...;base64 URL, or ask the operator to enable fetch_images.",
                param, "image_url_not_allowed",
            )
        block: dict[str, Any] = {"format": "png", "source": {"bytes": ""}}
        holes.append((block, url))
        return {"image": block}
    raise _bad(f"Invalid image URL at '{param}': expected a data: or http(s) URL.", param)


def _user_blocks(content: Any, param: str, fetch_images: bool, holes: list[tuple[dict[str, Any], str]]
                 ) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(f"Invalid type for '{param}': expected a string or an array of parts.", param, "invalid_type")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"Missing text in '{param}[{j}]'.", f"{param}[{j}]", "invalid_type")
            if text:
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{param}[{j}]", fetch_images, holes))
        else:
            raise _bad(f"Content part type {kind!r} at '{param}[{j}]' is not supported on Bedrock; "
                       "use text or image_url.", f"{param}[{j}]")
    return blocks


def _reasoning_blocks(msg: dict[str, Any], param: str) -> list[dict[str, Any]]:
    """Rebuild the reasoning blocks a previous answer carried (thinking + tools needs them)."""
    blocks: list[dict[str, Any]] = []
    text = msg.get("reasoning_content")
    if isinstance(text, str) and text:
        reasoning: dict[str, Any] = {"text": text}
        signature = msg.get("reasoning_signature")
        if isinstance(signature, str) and signature:
            reasoning["signature"] = signature
        blocks.append({"reasoningContent": {"reasoningText": reasoning}})
    redacted = msg.get("reasoning_redacted")
    for item in [redacted] if isinstance(redacted, str) else redacted or ():
        if not isinstance(item, str):
            raise _bad(f"Invalid '{param}.reasoning_redacted': expected base64 strings.", param, "invalid_type")
        blocks.append({"reasoningContent": {"redactedContent": item}})
    return blocks


def _tool_use_blocks(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _bad(f"Invalid type for '{param}.tool_calls': expected an array.", param, "invalid_type")
    blocks = []
    for j, call in enumerate(calls):
        where = f"{param}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise _bad(f"Invalid '{where}': expected {{id, type: function, function: {{name, arguments}}}}.", where)
        raw = fn.get("arguments") or "{}"
        try:
            args = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError as exc:
            raise _bad(f"Invalid '{where}.function.arguments': not valid JSON ({exc.msg}).",
                       f"{where}.function.arguments") from exc
        if not isinstance(args, dict):
            raise _bad(f"Invalid '{where}.function.arguments': expected a JSON object.", f"{where}.function.arguments")
        blocks.append({"toolUse": {"toolUseId": call["id"], "name": fn["name"], "input": args}})
    return blocks


def _tool_result(msg: dict[str, Any], param: str) -> dict[str, Any]:
    tool_id = msg.get("tool_call_id")
    if not isinstance(tool_id, str) or not tool_id:
        raise _bad(f"Missing 'tool_call_id' in '{param}'.", f"{param}.tool_call_id", "missing_required_parameter")
    text = _text_of(msg.get("content"), f"{param}.content")
    return {"toolResult": {"toolUseId": tool_id, "content": [{"text": text}]}}


def map_messages(messages: list[dict[str, Any]], fetch_images: bool = False
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[dict[str, Any], str]], set[str]]:
    """(system blocks, messages, image holes, tool names used in the history)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    holes: list[tuple[dict[str, Any], str]] = []
    history_tools: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"), f"{param}.content")
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            bedrock_role, blocks = "user", _user_blocks(msg.get("content"), f"{param}.content", fetch_images, holes)
        elif role == "assistant":
            bedrock_role = "assistant"
            blocks = _reasoning_blocks(msg, param)
            text = _text_of(msg.get("content"), f"{param}.content", ("text", "refusal"))
            if text:
                blocks.append({"text": text})
            if msg.get("tool_calls"):
                uses = _tool_use_blocks(msg["tool_calls"], param)
                history_tools.update(b["toolUse"]["name"] for b in uses)
                blocks.extend(uses)
        elif role == "tool":
            bedrock_role, blocks = "user", [_tool_result(msg, param)]
            history_tools.add("")  # a result needs toolConfig too, even without a named use
        else:
            raise _bad(f"Invalid role {role!r} at '{param}.role'; Bedrock takes system, developer, user, "
                       "assistant and tool.", f"{param}.role")
        if not blocks:
            continue
        if out and out[-1]["role"] == bedrock_role:
            prev = out[-1]["content"]
            # Tool results go first in their user turn, as Bedrock's own examples order them.
            if role == "tool" and prev and "toolResult" not in prev[-1]:
                insert_at = next((k for k, b in enumerate(prev) if "toolResult" not in b), len(prev))
                prev.insert(insert_at, blocks[0])
            else:
                prev.extend(blocks)
        else:
            out.append({"role": bedrock_role, "content": blocks})
    return system, out, holes, history_tools


# ---------------------------------------------------------------- tools


def _tool_config(body: dict[str, Any], history_tools: set[str]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    specs: list[dict[str, Any]] = []
    names: set[str] = set()
    if tools is not None and not isinstance(tools, list):
        raise _bad("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    for j, tool in enumerate(tools or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise _bad(f"Invalid 'tools[{j}]': Bedrock takes function tools only.", f"tools[{j}]")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise _bad(f"Invalid 'tools[{j}].function.name': {name!r} must match ^[a-zA-Z0-9_-]{{1,64}}$.",
                       f"tools[{j}].function.name")
        params = fn.get("parameters")
        spec: dict[str, Any] = {
            "name": name,
            "description": fn.get("description") or name,
            "inputSchema": {"json": params if isinstance(params, dict) else {"type": "object", "properties": {}}},
        }
        if isinstance(fn.get("strict"), bool):
            spec["strict"] = fn["strict"]
        specs.append({"toolSpec": spec})
        names.add(name)

    tool_choice: dict[str, Any] | None = None
    if choice is None or choice == "auto":
        tool_choice = {"auto": {}} if specs else None
    elif choice == "required":
        tool_choice = {"any": {}}
    elif choice == "none":
        if not history_tools:
            return None  # nothing to offer, nothing Bedrock insists on
        tool_choice = None
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise _bad(f"Invalid 'tool_choice': no tool named {name!r} in 'tools'.", "tool_choice")
        tool_choice = {"tool": {"name": name}}
    else:
        raise _bad("Invalid 'tool_choice': expected none, auto, required or {type: function, function: {name}}.",
                   "tool_choice")
    if tool_choice is not None and not specs:
        raise _bad("'tool_choice' needs 'tools'.", "tool_choice")
    # Bedrock refuses toolUse/toolResult blocks unless toolConfig names the tools.
    for name in sorted(history_tools - names - {""}):
        specs.append({"toolSpec": {"name": name, "description": _HISTORY_TOOL,
                                   "inputSchema": {"json": {"type": "object", "properties": {}}}}})
    if not specs:
        if history_tools:
            specs.append({"toolSpec": {"name": "unused", "description": _HISTORY_TOOL,
                                       "inputSchema": {"json": {"type": "object", "properties": {}}}}})
        else:
            return None
    config: dict[str, Any] = {"tools": specs}
    if tool_choice is not None:
        config["toolChoice"] = tool_choice
    return config


# ---------------------------------------------------------------- the request


def _inference(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        if max_tokens < 1:
            raise _bad("Invalid 'max_tokens': expected a positive integer.", "max_tokens")
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("Invalid 'stop': expected a string or an array of strings.", "stop", "invalid_type")
        stops = [s for s in stops if s]
        if stops:
            config["stopSequences"] = stops
    return config


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, why in REFUSED.items():
        if body.get(key) is not None:
            raise _bad(f"Unsupported parameter '{key}': {why}.", key, "unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("Unsupported value for 'n': Bedrock returns one choice per request; use n=1.", "n",
                   "unsupported_value")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("Unsupported parameter 'logprobs': Bedrock Converse does not return log probabilities.",
                   "logprobs", "unsupported_parameter")


def _output_config(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("Invalid 'response_format.json_schema': expected {name, schema}.", "response_format")
        definition: dict[str, Any] = {"schema": orjson.dumps(schema).decode()}
        if isinstance(spec.get("name"), str):
            definition["name"] = spec["name"]
        if isinstance(spec.get("description"), str):
            definition["description"] = spec["description"]
        return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}
    if kind == "json_object":
        raise _bad("Unsupported 'response_format' type json_object on Bedrock; use json_schema (structured "
                   "output) or ask for JSON in the prompt.", "response_format", "unsupported_value")
    raise _bad(f"Invalid 'response_format.type': {kind!r}.", "response_format")


def _apply_reasoning(body: dict[str, Any], model: str, out: dict[str, Any]) -> bool:
    """Map `reasoning_effort`; returns whether Claude thinking was switched on."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return False
    if effort not in THINKING_BUDGET:
        raise _bad(f"Invalid 'reasoning_effort': {effort!r}; expected low, medium or high.", "reasoning_effort")
    family = model_family(model)
    if family == "deepseek-r1":
        return False  # always reasons; it takes no budget
    extra = out.setdefault("additionalModelRequestFields", {})
    if family == "gpt-oss":
        extra["reasoning_effort"] = "low" if effort == "minimal" else effort
        return False
    if family != "claude":
        raise _bad(f"'reasoning_effort' is not supported for Bedrock model {model!r} by this gateway.",
                   "reasoning_effort", "unsupported_parameter")
    budget = max(THINKING_BUDGET[effort], _MIN_BUDGET)
    inference = out.setdefault("inferenceConfig", {})
    asked = inference.get("maxTokens")
    # The budget must stay below maxTokens; the client's max is kept as room for the answer.
    if asked is None:
        inference["maxTokens"] = budget + DEFAULT_ANSWER_TOKENS
    elif asked <= budget:
        inference["maxTokens"] = budget + asked
    # Claude refuses temperature/top_p changes while thinking.
    inference.pop("temperature", None)
    inference.pop("topP", None)
    extra["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return True


def guardrail_config(guardrail: Guardrail, stream: bool) -> dict[str, Any]:
    config: dict[str, Any] = {"guardrailIdentifier": guardrail.id, "guardrailVersion": guardrail.version}
    if guardrail.trace:
        config["trace"] = guardrail.trace
    if stream and guardrail.stream_processing_mode:
        config["streamProcessingMode"] = guardrail.stream_processing_mode
    return config


def map_chat(
    body: dict[str, Any],
    model: str,
    *,
    stream: bool = False,
    guardrail: Guardrail | None = None,
    fetch_images: bool = False,
) -> Mapped:
    """The Converse body (the model id travels in the URL) for one chat request."""
    _refuse_unsupported(body)
    system, messages, holes, history_tools = map_messages(body["messages"], fetch_images)
    if not messages:
        raise _bad("Bedrock needs at least one user message besides system messages.", "messages")
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference = _inference(body)
    if inference:
        out["inferenceConfig"] = inference
    tool_config = _tool_config(body, history_tools)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    output = _output_config(body)
    if output is not None:
        out["outputConfig"] = output
    thinking = _apply_reasoning(body, model, out)
    extra = body.get("additional_model_request_fields")
    if isinstance(extra, dict):
        out.setdefault("additionalModelRequestFields", {}).update(extra)
    if guardrail is not None:
        out["guardrailConfig"] = guardrail_config(guardrail, stream)
    return Mapped(out, holes, thinking)
