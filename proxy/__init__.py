"""relaygate: a self-hosted, pluggable gateway for the OpenAI API."""

from .hookspecs import hookimpl
from .upstream.provider import RegisterProvider

__version__ = "0.2.0"
__all__ = ["RegisterProvider", "__version__", "hookimpl"]
