"""Entry point of the `relaygate-vertex` distribution: registers `type: vertex`."""

from __future__ import annotations

from proxy import RegisterProvider
from proxy.hookspecs import hookimpl


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    # By reference: google-auth is imported only where a config uses `type: vertex`.
    register("vertex", "relaygate_vertex.provider:VertexProvider")
