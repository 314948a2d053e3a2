"""The `base_url` forms Google documents for Vertex AI's OpenAI-compatible endpoint.

Google's guide hands OpenAI clients a base URL that already names the version, project,
location and endpoint (`…/v1beta1/projects/P/locations/L/endpoints/openapi`, or
`…/endpoints/ENDPOINT_ID` for a self-deployed model); a Private Service Connect or
dedicated endpoint is an origin of its own. Both forms are accepted; the parts the URL
names become the provider's defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_FULL_PATH = re.compile(r"^/(v1|v1beta1)/projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)$")

ACCEPTED_FORMS = (
    "expected a bare origin (https://HOST) or Vertex AI's OpenAI base URL "
    "(https://HOST/v1beta1/projects/PROJECT/locations/LOCATION/endpoints/openapi, "
    "or …/endpoints/ENDPOINT_ID; v1 in place of v1beta1)"
)


@dataclass(slots=True, frozen=True)
class VertexBase:
    origin: str  # scheme://host[:port]
    api_version: str | None = None
    project: str | None = None
    location: str | None = None
    endpoint: str | None = None  # "openapi" or an endpoint id


def parse_base_url(url: str) -> VertexBase | None:
    """The parts of a `base_url`, or None when it is neither accepted form."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if not path:
        return VertexBase(origin)
    m = _FULL_PATH.match(path)
    if m is None:
        return None
    return VertexBase(origin, m.group(1), m.group(2), m.group(3), m.group(4))
