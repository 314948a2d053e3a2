"""The provider contract: one upstream account, created from its YAML block.

A provider class is registered under a type name by a plugin's `register_providers`
hook; the core instantiates one per `providers.<name>` entry, starts it with the app
and closes it on shutdown or after a reload once the requests that began on it have
finished. This is the contract alone: the HTTP machinery a provider talks through is
`proxy.upstream.seam.Upstream`, which it composes (`self.upstream = Upstream(name, options)`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..config.options import Options
from ..errors import ConfigError, InvalidRequest
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Call, ModelInfo, Reply, Target

#: What `register` takes: the class, or "module:Class" to import only when a config uses
#: the type (so a plugin with a heavy SDK costs nothing where it is not configured).
ProviderRef = type["Provider"] | str

#: The callback a plugin's `register_providers(register)` hook receives:
#: ``register("bedrock", BedrockProvider)`` or ``register("bedrock", "pkg.mod:BedrockProvider")``.
RegisterProvider = Callable[[str, ProviderRef], None]


def resolve_provider(kind: str, ref: ProviderRef) -> type[Provider]:
    """The class behind a registered reference, imported on first use."""
    cls: object = ref
    if isinstance(ref, str):
        module_name, _, attr = ref.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"provider type {kind!r}: cannot import {ref!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"provider type {kind!r} is registered with {ref!r}, which is not a Provider class")
    return cls


class Provider:
    """Base class of every provider type.

    Subclasses read their own keys from `options` in `__init__` (after calling
    `super().__init__`); the core refuses any key nobody read. No I/O in `__init__`:
    `relaygate check` builds providers without starting them.
    """

    # Class defaults; a provider may set them per instance (Azure's v1 mode passes through).
    #: Endpoints this provider serves; the router skips targets that cannot serve a call.
    endpoints: frozenset[str] = frozenset({CHAT, COMPLETIONS, EMBEDDINGS})
    #: Whether arbitrary other `/v1/*` routes may be forwarded to it byte for byte.
    supports_passthrough: bool = False
    #: Whether it can apply a route's `guardrail:`; `check` refuses such routes otherwise.
    supports_guardrails: bool = False
    #: How `/v1/responses` reaches it: "native" sends the Responses request upstream as it
    #: is; "translate" has the core translate it onto this provider's chat path. YAML's
    #: `responses:` overrides it per provider (docs/responses.md).
    responses: str = "translate"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.type: str = options.raw("type")
        self.responses = options.str("responses", self.responses, choices=("native", "translate"))

    def serves(self, endpoint: str) -> bool:
        """Whether a call to `endpoint` may be sent here; the attempt loop skips targets that cannot."""
        if endpoint == RESPONSES:
            return self.responses == "native" or CHAT in self.endpoints
        return endpoint in self.endpoints

    def target_options(self, opts: Options) -> dict[str, object]:
        """Read this provider's extra keys on a route target (e.g. Vertex `endpoint_id`).

        Keys left unread are refused, so a provider that takes none needs no override.
        """
        return {}

    async def start(self) -> None:
        """Open connection pools and credential objects (once, with the app)."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def list_models(self) -> list[ModelInfo] | None:
        """The upstream models, or None when this provider cannot list them.

        Called by `/v1/models`; implementations cache (a listing is never fetched per request).
        """
        return None

    async def send(self, call: Call, target: Target) -> Reply:
        """Send `call` upstream as `target` and return the reply.

        Raise a `proxy.errors.GatewayError` on failure; a retryable one before the
        reply is returned (or before a stream's first chunk) lets the core fall back.
        """
        raise InvalidRequest(f"provider {self.name!r} does not serve {call.endpoint}")
