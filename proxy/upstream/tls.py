"""TLS per provider: `tls: {ca_file, verify, client_cert, client_key}`.

Without a `tls:` block a provider verifies against the system's trust store (one shared
context). The context is built when the provider starts (it reads files), so
`relaygate check` only validates the keys.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from ..config.options import Options
from ..errors import ConfigError

log = logging.getLogger("relaygate.upstream")


@dataclass(slots=True, frozen=True)
class TLSSettings:
    ca_file: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None

    @classmethod
    def from_options(cls, options: Options) -> TLSSettings | None:
        if "tls" not in options:
            return None
        block = options.block("tls")
        settings = cls(
            ca_file=block.str("ca_file", None),
            verify=block.bool("verify", True),
            client_cert=block.str("client_cert", None),
            client_key=block.str("client_key", None),
        )
        block.check_unused()
        if settings.client_key and not settings.client_cert:
            raise block.error("client_key", "client_key needs client_cert")
        if settings.ca_file and not settings.verify:
            raise block.error("ca_file", "ca_file has no use with verify: false")
        return settings

    def context(self, provider: str) -> ssl.SSLContext:
        """A client context for this provider (file I/O: call at start, not in `check`)."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.client_cert:
                ctx.load_cert_chain(self.client_cert, self.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"provider {provider!r}: tls: cannot load {exc.__class__.__name__}: {exc}") from exc
        if not self.verify:
            log.warning("provider %s: tls.verify is false; its upstream's certificate is not checked", provider)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx
