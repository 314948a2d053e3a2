"""The blocking HTTP transport google-auth refreshes tokens through.

google-auth needs a `google.auth.transport.Request`; its bundled ones need `requests` or
`urllib3`. This one is the standard library's urllib, which is all a token refresh
needs, so the plugin depends on google-auth alone. It runs only in worker threads
(`asyncio.to_thread`), never on the event loop. It goes out the way the provider's own
upstream calls do: through the same egress proxy (`HTTPS_PROXY`/`NO_PROXY`, unless the
provider says `proxy: false`) and with the provider's `tls:` context.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

from google.auth import exceptions, transport
from yarl import URL

from proxy.upstream.proxies import proxy_for
from proxy.upstream.transport import TransportSettings


class _Response(transport.Response):
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status = status
        self._headers = dict(headers)
        self._data = data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class UrllibRequest(transport.Request):
    """`google.auth.transport.Request` over `urllib.request`, with a default timeout."""

    def __init__(self, timeout: float = 30.0, settings: TransportSettings | None = None) -> None:
        self.timeout = timeout
        self.settings = settings or TransportSettings()

    def _opener(self, url: str) -> urllib.request.OpenerDirector:
        """Built per call (a token refresh is rare): the proxy depends on the URL's host."""
        s = self.settings
        proxy = proxy_for(URL(url), s.proxies, s.no_proxy)
        proxies = {"http": str(proxy), "https": str(proxy)} if proxy is not None else {}
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler(proxies)]
        if s.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=s.ssl_context))
        return urllib.request.build_opener(*handlers)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: object,
    ) -> _Response:
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
        try:
            with self._opener(url).open(request, timeout=timeout or self.timeout) as resp:
                return _Response(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _Response(exc.code, dict(exc.headers.items()), exc.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            message = f"{type(exc).__name__} talking to {urlsplit(url).netloc}"
            raise exceptions.TransportError(message) from exc  # type: ignore[no-untyped-call]
