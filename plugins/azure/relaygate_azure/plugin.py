"""Entry point of the `relaygate-azure` distribution: registers `type: azure`."""

from __future__ import annotations

from proxy import RegisterProvider
from proxy.hookspecs import hookimpl

from .provider import AzureProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("azure", AzureProvider)
