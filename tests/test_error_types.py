"""The closed `error_type` set: every error the gateway can produce counts as exactly one value.

The access log, the metrics and the traces all report `GatewayError.error_type`; this
enumerates every way an error is made (each class, each upstream status, each provider's
error mapping) and checks the value is in the closed set, and that an upstream's answer
is counted as `upstream_*` whichever class renders it to the client.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from proxy import errors
from proxy.config.options import Options
from proxy.errors import (
    CLIENT_DISCONNECTED,
    ERROR_TYPES,
    GatewayError,
    LimitExceeded,
    ShuttingDown,
    error_for_status,
    upstream_error_type,
)
from proxy.upstream import transport
from proxy.upstream.openai_compat import OpenAICompatibleProvider

PACKAGES = ("proxy", "relaygate_bedrock", "relaygate_azure", "relaygate_vertex")
UPSTREAM_STATUSES = range(400, 600)


def _import_everything() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name != "proxy.__main__":
                importlib.import_module(info.name)


def _subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_the_set_is_the_one_design_names() -> None:
    assert ERROR_TYPES == (
        "client_bad_request", "client_auth", "client_permission", "client_not_found", "client_too_large",
        "client_disconnected", "limit_requests", "limit_tokens", "limit_concurrency", "limit_budget",
        "upstream_bad_request", "upstream_auth", "upstream_not_found", "upstream_rate_limited",
        "upstream_capacity", "upstream_timeout", "upstream_unavailable", "upstream_error", "gateway_internal",
    )  # fmt: skip
    assert CLIENT_DISCONNECTED in ERROR_TYPES


def test_every_error_class_of_core_and_plugins_has_one_value() -> None:
    _import_everything()
    classes = [GatewayError, *_subclasses(GatewayError)]
    modules = {cls.__module__.split(".")[0] for cls in classes}
    assert {"proxy", "relaygate_azure"} <= modules  # the walk found the plugins' own classes
    for cls in classes:
        assert cls.error_type in ERROR_TYPES, cls


@pytest.mark.parametrize("status", UPSTREAM_STATUSES)
def test_every_upstream_status_counts_as_upstream(status: int) -> None:
    err = error_for_status(status, "m")
    assert err.error_type == upstream_error_type(status)
    assert err.error_type.startswith("upstream_") and err.error_type in ERROR_TYPES
    assert err.status == status


def test_upstream_statuses_map_to_their_meaning() -> None:
    expected = {400: "upstream_bad_request", 401: "upstream_auth", 403: "upstream_auth", 404: "upstream_not_found",
                408: "upstream_timeout", 413: "upstream_bad_request", 422: "upstream_bad_request",
                429: "upstream_rate_limited", 500: "upstream_error", 502: "upstream_error",
                503: "upstream_unavailable", 504: "upstream_timeout"}
    assert {s: upstream_error_type(s) for s in expected} == expected


def test_the_gateways_own_errors() -> None:
    for kind in ("requests", "tokens", "concurrency", "budget"):
        for scope in ("key", "route", "provider"):
            err = LimitExceeded("m", kind=kind, scope=scope)  # type: ignore[arg-type]
            assert err.error_type == f"limit_{kind}" and err.status == 429
    assert errors.UpstreamCapacityExceeded("m").error_type == "upstream_capacity"
    assert ShuttingDown("m").error_type == "gateway_internal" and ShuttingDown("m").status == 503
    assert GatewayError("m").error_type == "gateway_internal"
    assert errors.UnknownURL("GET", "/x").error_type == "client_not_found"
    assert errors.MethodNotAllowed("m").error_type == "client_bad_request"
    assert errors.PayloadTooLarge("m").error_type == "client_too_large"
    assert errors.AuthenticationFailed("m").error_type == "client_auth"
    assert errors.PermissionDenied("m").error_type == "client_permission"
    assert errors.ModelNotFound("m").error_type == "client_not_found"


def _openai_provider() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("up", Options({"type": "openai", "base_url": "http://127.0.0.1:9/v1"}))


@pytest.mark.parametrize("status", UPSTREAM_STATUSES)
def test_openai_compatible_answers(status: int) -> None:
    body = orjson.dumps({"error": {"message": "m", "type": "invalid_request_error", "code": "c"}})
    err = _openai_provider().error_for(status, body, {})
    assert err.error_type == upstream_error_type(status)


def test_transport_failures_are_upstream() -> None:
    upstream = _openai_provider().upstream
    failures = [
        TimeoutError(), transport.PoolTimeout("full"), transport.TLSFailed("no", "bad certificate"),
        transport.ConnectFailed("refused"), transport.ResponseTooLarge("big"), transport.ProtocolError("garbled"),
        aiohttp.ServerDisconnectedError(), RuntimeError("anything else"),
    ]  # fmt: skip
    got = [upstream.transport_error(exc).error_type for exc in failures]
    assert got == ["upstream_timeout", "upstream_unavailable", "upstream_unavailable", "upstream_unavailable",
                   "upstream_error", "upstream_error", "upstream_error", "upstream_error"]


def test_bedrock_answers_count_as_upstream_whatever_class_renders_them() -> None:
    from relaygate_bedrock import errors as bedrock

    names = [*bedrock._BY_NAME, "SomethingNewException", None]
    for name in names:
        for status in (400, 403, 404, 408, 429, 500, 503):
            headers = {"x-amzn-errortype": name} if name else {}
            err = bedrock.error_from_response("br", status, b'{"message": "m"}', headers)
            assert err.error_type == upstream_error_type(err.status), (name, status)
        frame = bedrock.error_from_frame("br", {":exception-type": name or ""}, b'{"message": "m"}')
        assert frame.error_type == upstream_error_type(frame.status), name
    # The case that motivated it: Bedrock's 400 is the client's 400, counted as the upstream's.
    err = bedrock.error_from_response("br", 400, b'{"message": "bad"}', {"x-amzn-errortype": "ValidationException"})
    assert isinstance(err, errors.InvalidRequest) and err.error_type == "upstream_bad_request"


def test_azure_answers_count_as_upstream() -> None:
    from relaygate_azure.errors import azure_error

    bodies = [
        b"",
        b'{"error": {"code": "DeploymentNotFound", "message": "m"}}',
        b'{"error": {"code": "content_filter", "message": "m",'
        b' "innererror": {"code": "ResponsibleAIPolicyViolation"}}}',
        b'{"statusCode": 401, "message": "m"}',
        b'{"error": {"code": "429", "message": "m"}}',
    ]
    for status in UPSTREAM_STATUSES:
        for body in bodies:
            err = azure_error("az", status, body, {"retry-after-ms": "1500"})
            assert err.error_type == upstream_error_type(err.status), (status, body)
    filtered = azure_error("az", 400, bodies[2], {})
    assert filtered.error_type == "upstream_bad_request"
    missing = azure_error("az", 404, bodies[1], {})
    assert missing.error_type == "upstream_not_found"


def test_vertex_answers_count_as_upstream() -> None:
    from relaygate_vertex.errors import GOOGLE_STATUS, vertex_error

    for google_status in [*GOOGLE_STATUS, "NEW_STATUS"]:
        body = orjson.dumps([{"error": {"code": 400, "message": "m", "status": google_status}}])
        for status in (400, 404, 429, 500):
            err = vertex_error("vx", "proj", status, body, {})
            assert err.error_type == upstream_error_type(err.status), (google_status, status)


def test_every_value_is_produced_by_something() -> None:
    """No dead value: each one of the set is what some failure counts as."""
    _import_everything()
    produced = {cls.error_type for cls in [GatewayError, *_subclasses(GatewayError)]}
    produced |= {upstream_error_type(s) for s in UPSTREAM_STATUSES}
    produced |= {f"limit_{k}" for k in ("requests", "tokens", "concurrency", "budget")}
    produced.add(CLIENT_DISCONNECTED)  # set by the journey when the client leaves
    assert produced == set(ERROR_TYPES)
