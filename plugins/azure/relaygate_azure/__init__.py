"""relaygate's Azure OpenAI provider (`type: azure`).

Modules, one per concern: `provider` (URLs, auth headers, wiring), `auth` (Entra ID
tokens), `stream` (Azure's SSE quirks), `errors` (Azure error bodies), `plugin` (the
entry point). Nothing is imported or opened at import time beyond the modules themselves.
"""

__version__ = "0.1.0"
