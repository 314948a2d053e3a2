"""`/v1/embeddings` on Bedrock InvokeModel: Cohere Embed (v3, v4) and Amazon Titan (v1, v2).

Each family has its own body: Cohere takes up to 96 texts per call and an `input_type`
(OpenAI has none: `search_document` by default, or the non-OpenAI body field
`input_type`); Titan takes one text per call, so a batch becomes concurrent calls,
bounded so one request cannot open hundreds of upstream connections.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.errors import InvalidRequest, UpstreamError
from proxy.types import Usage

COHERE_BATCH = 96
TITAN_CONCURRENCY = 8
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")

Invoke = Callable[[bytes], Awaitable[dict[str, Any]]]


def embedding_family(model_id: str) -> str:
    mid = model_id.lower()
    if "cohere.embed" in mid:
        return "cohere-v4" if "embed-v4" in mid else "cohere"
    if "amazon.titan-embed" in mid:
        return "titan-v2" if "text-v2" in mid else "titan"
    return "other"


def texts_of(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "Bedrock embedding models take text: 'input' must be a string or an array of strings "
            "(token arrays are not supported).",
            param="input",
            code="invalid_type",
        )
    if any(not t for t in texts):
        raise InvalidRequest("Invalid 'input': empty strings cannot be embedded.", param="input", code="invalid_value")
    return texts


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _vectors_of_cohere(data: dict[str, Any]) -> list[list[float]]:
    embeddings = data.get("embeddings")
    if isinstance(embeddings, dict):  # embedding_types given: {"float": [[...]]}
        embeddings = embeddings.get("float")
    if not isinstance(embeddings, list):
        raise UpstreamError("Bedrock's Cohere embedding answer had no embeddings.", code="bad_upstream_response")
    return embeddings


async def _cohere(texts: list[str], body: dict[str, Any], v4: bool, invoke: Invoke) -> tuple[list[list[float]], int]:
    input_type = body.get("input_type", "search_document")
    if input_type not in COHERE_INPUT_TYPES:
        raise InvalidRequest(
            f"Invalid 'input_type': {input_type!r}; expected one of {', '.join(COHERE_INPUT_TYPES)}.",
            param="input_type",
        )
    base: dict[str, Any] = {"input_type": input_type, "embedding_types": ["float"]}
    dims = body.get("dimensions")
    if dims is not None:
        if not v4:
            raise InvalidRequest("'dimensions' is supported by Cohere Embed v4 only.", param="dimensions")
        base["output_dimension"] = dims
    if isinstance(body.get("truncate"), str):
        base["truncate"] = body["truncate"]
    batches = [texts[i : i + COHERE_BATCH] for i in range(0, len(texts), COHERE_BATCH)]
    answers = await asyncio.gather(*(invoke(orjson.dumps({**base, "texts": batch})) for batch in batches))
    vectors = [v for answer in answers for v in _vectors_of_cohere(answer)]
    return vectors, 0  # Cohere on Bedrock reports no token count


async def _titan(texts: list[str], body: dict[str, Any], v2: bool, invoke: Invoke) -> tuple[list[list[float]], int]:
    extra: dict[str, Any] = {}
    if body.get("dimensions") is not None:
        if not v2:
            raise InvalidRequest("'dimensions' is supported by Titan Text Embeddings v2 only.", param="dimensions")
        extra["dimensions"] = body["dimensions"]
    if v2 and isinstance(body.get("normalize"), bool):
        extra["normalize"] = body["normalize"]
    limit = asyncio.Semaphore(TITAN_CONCURRENCY)

    async def one(text: str) -> dict[str, Any]:
        async with limit:
            return await invoke(orjson.dumps({"inputText": text, **extra}))

    answers = await asyncio.gather(*(one(t) for t in texts))
    vectors = []
    tokens = 0
    for answer in answers:
        vector = answer.get("embedding")
        if not isinstance(vector, list):
            raise UpstreamError("Bedrock's Titan embedding answer had no embedding.", code="bad_upstream_response")
        vectors.append(vector)
        count = answer.get("inputTextTokenCount")
        tokens += count if isinstance(count, int) else 0
    return vectors, tokens


async def embed(body: dict[str, Any], model: str, invoke: Invoke) -> tuple[bytes, Usage]:
    """The OpenAI embeddings list for `body` on Bedrock model `model`, and its usage."""
    family = embedding_family(model)
    if family == "other":
        raise InvalidRequest(
            f"Bedrock model {model!r} is not an embedding model this gateway knows (Cohere Embed, Titan Embeddings).",
            param="model",
            code="unsupported_model",
        )
    texts = texts_of(body)
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise InvalidRequest("Invalid 'dimensions': expected a positive integer.", param="dimensions")
    if family.startswith("cohere"):
        vectors, tokens = await _cohere(texts, body, family == "cohere-v4", invoke)
    else:
        vectors, tokens = await _titan(texts, body, family == "titan-v2", invoke)
    as_base64 = body.get("encoding_format") == "base64"
    out = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, as_base64)} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(out), Usage(tokens, 0)
