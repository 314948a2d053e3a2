"""Entry point of the `relaygate-azure` distribution: registers `type: azure`."""

from __future__ import annotations

from collections.abc import Callable

from proxy.hookspecs import hookimpl
from proxy.provider import Provider

from .provider import AzureProvider


@hookimpl
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("azure", AzureProvider)
