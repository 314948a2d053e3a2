"""The OpenAI Responses API on every provider (docs/responses.md).

`POST /v1/responses` is routed like chat. Per target the request is either passed through
natively (`responses: native`) or translated onto the provider's chat path and its answer
translated back, stream included. Stored responses live in the shared state
(`runtime.state`), each visible only to the client key that created it.
"""

from .routes import add_routes

__all__ = ["add_routes"]
