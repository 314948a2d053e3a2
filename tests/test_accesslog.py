"""The access log: one JSON record per request, with names and numbers, never keys or bodies."""

from __future__ import annotations

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, UPSTREAM_KEY, access_record, post_json, raw
from fakes.openai_upstream import Behaviour, FakeOpenAI

from proxy.testing import Gateway

FIELDS = {"ts", "request_id", "client", "method", "route", "model", "provider", "upstream_model", "stream",
          "status", "latency_ms", "ttfb_ms", "tokens_in", "tokens_out", "fallbacks", "error",
          "error_type"}
SECRET_PROMPT = "the launch code is 0000-swordfish"


def test_success_record(client: openai.OpenAI, gw: Gateway) -> None:
    resp = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": SECRET_PROMPT}], extra_headers={"x-request-id": "log-1"})
    assert resp.headers["x-request-id"] == "log-1"
    record = access_record(gw, "log-1")
    assert set(record) >= FIELDS
    assert record["client"] == "team-a" and record["method"] == "POST"
    assert record["route"] == "/v1/chat/completions" and record["model"] == "gpt-4o"
    assert record["provider"] == "up" and record["upstream_model"] == "gpt-4o"
    assert record["status"] == 200 and record["error"] is None and record["fallbacks"] == []
    assert record["error_type"] is None
    assert record["tokens_in"] == 5 and record["tokens_out"] == 6
    assert 0 < record["ttfb_ms"] <= record["latency_ms"]
    assert SECRET_PROMPT not in gw.log_text and "swordfish" not in gw.log_text
    assert CLIENT_KEY not in gw.log_text and UPSTREAM_KEY not in gw.log_text


def test_embeddings_and_passthrough_records(gw: Gateway) -> None:
    post_json(f"{gw.base_url}/embeddings", {"model": "text-embedding-3-small", "input": "a b c"},
              headers={"x-request-id": "log-emb"})
    post_json(f"{gw.base_url}/moderations", {"input": "x", "model": "omni-moderation-latest"},
              headers={"x-request-id": "log-mod"})
    raw("GET", f"{gw.base_url}/models", headers={"x-request-id": "log-models"})
    emb = access_record(gw, "log-emb")
    assert emb["route"] == "/v1/embeddings" and emb["tokens_in"] == 3 and emb["status"] == 200
    mod = access_record(gw, "log-mod")
    assert mod["route"] == "/v1/moderations" and mod["provider"] == "up" and mod["status"] == 200
    assert access_record(gw, "log-models")["route"] == "/v1/models"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error", "error_type"),
    [
        ({"key": None}, 401, "missing_api_key", "client_auth"),
        ({"key": "sk-nope"}, 401, "invalid_api_key", "client_auth"),
        ({"body": b"{nope"}, 400, "invalid_json", "client_bad_request"),
    ],
)
def test_refused_requests_are_logged(request_kwargs: dict, status: int, error: str, error_type: str,
                                     gw: Gateway) -> None:
    body = request_kwargs.pop("body", orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
    resp = raw("POST", f"{gw.base_url}/chat/completions", body, headers={"x-request-id": "log-bad"},
               **request_kwargs)
    assert resp.status == status
    record = access_record(gw, "log-bad")
    assert record["status"] == status and record["error"] == error and record["error_type"] == error_type
    if status == 401:
        assert record["client"] is None
    assert "sk-nope" not in gw.log_text


def test_upstream_failure_record(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("gpt-4o", Behaviour(status=500))
    post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
              headers={"x-request-id": "log-500"})
    record = access_record(gw, "log-500")
    assert record["status"] == 500 and record["provider"] == "up" and record["error"]
    assert record["error_type"] == "upstream_error"
    assert record["tokens_in"] is None


USAGE = (b'"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,'
         b'"prompt_tokens_details":{"cached_tokens":0}}')


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"id":"c","choices":[{"index":0}],' + USAGE + b'}', (7, 3)),
    (b'{"id":"c",' + USAGE + b',"system_fingerprint":"fp_1","service_tier":"default"}', (7, 3)),
    (b'{' + USAGE + b',"choices":[{"message":{"content":"say \\"usage\\": no"}}]}', (7, 3)),
    # The last "usage" is nested: the tail is not an object, so the whole answer is parsed.
    (b'{' + USAGE + b',"choices":[{"x":{"usage":{"prompt_tokens":99}}}]}', (7, 3)),
    (b'{"object":"list","data":[{"embedding":[0.1,0.2]}],"model":"e",'
     b'"usage":{"prompt_tokens":4,"total_tokens":4}}', (4, 0)),
    (b'{"id":"c","choices":[]}', None),
    (b'{"usage": not json', None),
])
def test_usage_read_from_the_answer(body: bytes, expected: tuple[int, int] | None) -> None:
    from proxy.upstream.openai_compat import OpenAICompatibleProvider

    usage = OpenAICompatibleProvider._usage_of(body)
    assert (None if usage is None else (usage.prompt_tokens, usage.completion_tokens)) == expected
