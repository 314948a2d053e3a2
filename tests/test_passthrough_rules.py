"""Pass-through decided by route: methods, paths, the raw query, and which bodies name a model."""

from __future__ import annotations

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, access_record, raw
from fakes.openai_upstream import FakeOpenAI
from openapi_check import validate

from proxy.testing import Gateway


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/batches"), ("POST", "/v1/batches/batch_1/cancel"), ("POST", "/v1/vector_stores"),
    ("POST", "/v1/responses/resp_1/cancel"), ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel"),
    ("POST", "/v1/files"), ("POST", "/v1/assistants"),
])
def test_a_model_in_the_body_does_not_open_model_less_routes_to_limited_keys(
    method: str, path: str, gw: Gateway, upstream: FakeOpenAI
) -> None:
    """A key limited to gpt-4o* must not reach batches, vector stores, ... by adding an allowed model."""
    resp = raw(method, gw.url + path, orjson.dumps({"model": "gpt-4o", "input_file_id": "f"}), key=LIMITED_KEY)
    # (A response's routes check ownership first: one the key did not create is 404 to it.)
    assert resp.status == (404 if path.startswith("/v1/responses/") else 403), resp.body
    validate("ErrorResponse", resp.json)
    assert upstream.requests == []


def test_routes_where_the_model_runs_still_check_it(gw: Gateway, upstream: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=gw.base_url, api_key=LIMITED_KEY, max_retries=0) as client:
        assert client.moderations.create(model="gpt-4o-mini", input="x").results is not None
        with pytest.raises(openai.PermissionDeniedError):
            client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert [r.path for r in upstream.requests] == ["/v1/moderations"]


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "PROPFIND", "OPTIONS", "HEAD"])
def test_only_the_openai_apis_methods_are_forwarded(method: str, gw: Gateway, upstream: FakeOpenAI) -> None:
    """An upstream that echoes TRACE would hand the client the gateway's upstream key."""
    resp = raw(method, f"{gw.base_url}/files", b"{}" if method in ("PUT", "PATCH") else None)
    assert resp.status == 405
    assert resp.header("Allow") == "GET, POST, DELETE"
    if method != "HEAD":
        assert resp.json["error"]["code"] == "method_not_allowed"
    assert upstream.requests == []


def test_the_query_string_is_forwarded_as_sent(gw: Gateway, upstream: FakeOpenAI) -> None:
    query = "after=a%23b%25c%09d&purpose=x%26y&limit=2"
    assert raw("GET", f"{gw.base_url}/files?{query}").status == 200
    assert upstream.last("/v1/files").query == query  # not decoded into #, %, TAB or a new parameter


@pytest.mark.parametrize("path", [
    "/v1/files/..;/admin", "/v1/files/..%3B/admin", "/v1/files/.;x/x", "/v1/files\\..\\admin",
    "/v1/files/%5c..%5cadmin", "/v1/files/%252e%252e/admin", "/v1/files/%25252e%25252e/admin",
    "/v1/files/a%2F..%2F..%2Fadmin", "/v1/files/a%00b",
])
def test_paths_an_upstream_could_resolve_elsewhere_never_leave(path: str, gw: Gateway, upstream: FakeOpenAI) -> None:
    resp = raw("GET", gw.url + path)
    assert resp.status == 404, resp.body
    assert resp.json["error"]["code"] == "unknown_url"
    assert upstream.requests == []


def test_ordinary_percent_encoding_still_passes(gw: Gateway, upstream: FakeOpenAI) -> None:
    assert raw("GET", f"{gw.base_url}/files/file-a%2Fb%20c").status == 200
    assert upstream.last().raw_path == "/v1/files/file-a%2Fb%20c"


def test_unmatched_paths_reach_the_access_log(gw: Gateway) -> None:
    resp = raw("POST", f"{gw.url}/openai/nothing/here", b"{}", headers={"x-request-id": "unmatched-1"})
    assert resp.status == 404
    validate("ErrorResponse", resp.json)
    record = access_record(gw, "unmatched-1")
    assert record["status"] == 404 and record["route"] == "/openai/nothing/here"
    assert record["error"] == "unknown_url" and record["client"] is None
    assert CLIENT_KEY not in gw.log_text
