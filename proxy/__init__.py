"""relaygate: a self-hosted, pluggable gateway for the OpenAI API."""

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
