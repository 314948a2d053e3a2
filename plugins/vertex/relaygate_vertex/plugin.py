"""Entry point of the `relaygate-vertex` distribution: registers `type: vertex`."""

from __future__ import annotations

from collections.abc import Callable

from proxy.hookspecs import hookimpl
from proxy.provider import Provider


@hookimpl
def register_providers(register: Callable[[str, type[Provider] | str], None]) -> None:
    # By reference: google-auth is imported only where a config uses `type: vertex`.
    register("vertex", "relaygate_vertex.provider:VertexProvider")
