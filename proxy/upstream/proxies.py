"""Egress proxies from the environment: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`.

Read once per provider when its config is loaded (the standard library's rules: either
case, `NO_PROXY` a comma list of host suffixes, `*` for all, ports optional), and
applied per origin by both transports, so an operator's proxy settings are never
silently ignored. A provider can opt out with `proxy: false`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from yarl import URL


def environment_proxies() -> tuple[dict[str, str], str]:
    """({"http": url, "https": url}, NO_PROXY) as the environment sets them."""
    found = urllib.request.getproxies_environment()
    proxies = {scheme: found[scheme] for scheme in ("http", "https") if found.get(scheme)}
    return proxies, found.get("no", "")


def proxy_for(url: URL, proxies: Mapping[str, str], no_proxy: str) -> URL | None:
    """The proxy to reach `url` through, or None to connect directly."""
    chosen = proxies.get(url.scheme or "")
    if not chosen or not url.host:
        return None
    if no_proxy and _bypass(url, no_proxy):
        return None
    proxy = URL(chosen if "://" in chosen else f"http://{chosen}")
    if proxy.scheme != "http" or not proxy.host:
        raise ValueError(f"only http:// proxies are supported, got {proxy.scheme}://")
    return proxy


def _bypass(url: URL, no_proxy: str) -> bool:
    host_port = f"{url.host}:{url.port}" if url.port else str(url.host)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    return bool(bypass(host_port, {"no": no_proxy}))
