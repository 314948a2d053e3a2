"""Bedrock's hosts and base URLs as AWS documents them, read into what each provider type needs.

AWS hands OpenAI clients `https://bedrock-runtime.REGION.amazonaws.com/openai/v1` (or the
Mantle endpoint `https://bedrock-mantle.REGION.api.aws/v1`), and AWS SDKs a bare runtime
endpoint plus a region that may come from `AWS_REGION`. Operators copy either into either
provider type, so both take both: the region is read from the host where it names one.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from proxy.config.options import Options

#: bedrock-runtime[-fips].REGION.amazonaws.com[.cn], VPC endpoints (…bedrock-runtime.REGION.vpce.amazonaws.com),
#: bedrock-mantle.REGION.api.aws.
_REGIONAL_HOST = re.compile(
    r"(?:^|\.)bedrock-(?:runtime(?:-fips)?|mantle)\.([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:vpce\.)?(?:amazonaws\.com|api\.aws)"
)
_OPENAI_PATHS = ("/openai/v1", "/v1")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


def region_of(url: str | None) -> str | None:
    """The AWS region a Bedrock host names, if it names one (a proxy or private DNS name does not)."""
    if not url:
        return None
    m = _REGIONAL_HOST.search((urlsplit(url).hostname or "").lower())
    return m.group(1) if m else None


def resolve_region(options: Options, url: str | None, *, required: bool) -> str | None:
    """`region`, else the endpoint host's, else `AWS_REGION` / `AWS_DEFAULT_REGION` as AWS SDKs read it."""
    region = options.str("region", None) or region_of(url)
    if region is None:
        region = next((os.environ[name] for name in REGION_ENV if os.environ.get(name)), None)
    if region is None and required:
        where = "the endpoint's host names none and " if url else ""
        raise options.error(
            "region", f"required: {where}AWS_REGION is not set (an AWS region such as us-west-2)"
        )
    return region.strip().lower() if region else None


def runtime_root(url: str) -> str:
    """The runtime endpoint for Converse (`/model/...` paths hang off its root)."""
    for suffix in _OPENAI_PATHS:
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def openai_base(url: str) -> str:
    """The OpenAI base URL: as written when it has a path, else the host's documented one."""
    if urlsplit(url).path not in ("", "/"):
        return url
    host = (urlsplit(url).hostname or "").lower()
    return url.rstrip("/") + ("/v1" if host.startswith("bedrock-mantle.") else "/openai/v1")
