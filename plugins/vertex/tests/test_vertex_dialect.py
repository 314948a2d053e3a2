"""`base_url` as Google documents it: a bare origin, or the full OpenAI base URL of an endpoint."""

from __future__ import annotations

import pytest
from relaygate_vertex.provider import VertexProvider
from vertex_support import HELLO, client_for, config

from proxy.config.options import Options
from proxy.errors import ConfigError
from proxy.testing import Gateway

PATH = "/{version}/projects/my-proj-123/locations/us-central1/endpoints/{endpoint}/chat/completions"


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
def test_documented_openai_base_url_is_not_appended_twice(google, version: str) -> None:
    """Google's guide gives OpenAI clients `…/endpoints/openapi` as the base URL; it works as it is."""
    state, url, account = google
    base = f"{url}/{version}/projects/my-proj-123/locations/us-central1/endpoints/openapi/"
    yaml = config(base, account).replace("    project: my-proj-123\n    location: us-central1\n", "")
    with Gateway(yaml) as gw, client_for(gw) as client:
        assert client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO).choices
        assert state.seen()["path"] == PATH.format(version=version, endpoint="openapi")
        # A route target's endpoint_id still picks its own endpoint.
        client.chat.completions.create(model="my-llama", messages=HELLO)
        assert state.seen()["path"] == PATH.format(version=version, endpoint="1234567890")


def test_base_url_naming_a_self_deployed_endpoint(google) -> None:
    state, url, account = google
    base = f"{url}/v1/projects/my-proj-123/locations/us-central1/endpoints/555"
    with Gateway(config(base, account)) as gw, client_for(gw) as client:
        client.chat.completions.create(model="gemini-2.0-flash", messages=HELLO)
        assert state.seen()["path"] == PATH.format(version="v1", endpoint="555")


def _provider(**block: object) -> VertexProvider:
    return VertexProvider("v", Options({"type": "vertex", **block}, ("providers", "v")))


def test_parts_come_from_the_base_url() -> None:
    p = _provider(base_url="https://psc.example/v1/projects/p-9/locations/europe-west4/endpoints/openapi")
    assert (p.project, p.location, p.api_version) == ("p-9", "europe-west4", "v1")
    assert p.endpoints_url == "https://psc.example/v1/projects/p-9/locations/europe-west4/endpoints"
    bare = _provider(base_url="https://psc.example/", project="p-9")
    assert bare.endpoints_url == "https://psc.example/v1beta1/projects/p-9/locations/us-central1/endpoints"


@pytest.mark.parametrize(("block", "message"), [
    ({"base_url": "https://h.example/v1beta1/projects/p-1", "project": "p-1"}, "bare origin"),
    ({"base_url": "https://h.example/v1/chat/completions", "project": "p-1"}, "endpoints/openapi"),
    ({"base_url": "https://h.example/v1/projects/p/locations/l/endpoints/openapi/chat/completions"}, "ENDPOINT_ID"),
    ({"base_url": "https://h.example/v1/projects/p-1/locations/us-east1/endpoints/openapi", "project": "p-2"},
     "disagrees with the base_url, which names 'p-1'"),
    ({"base_url": "https://h.example/v1/projects/p-1/locations/us-east1/endpoints/openapi",
      "api_version": "v1beta1"}, "api_version: 'v1beta1' disagrees"),
    ({"location": "us-central1"}, "project: required"),
])
def test_other_forms_are_check_errors_naming_the_accepted_ones(block: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _provider(**block)
