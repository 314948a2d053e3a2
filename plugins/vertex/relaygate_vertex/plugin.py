"""Entry point of the `relaygate-vertex` distribution: registers `type: vertex`."""

from __future__ import annotations

from collections.abc import Callable

from proxy.hookspecs import hookimpl
from proxy.provider import Provider

from .provider import VertexProvider


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("vertex", VertexProvider)
