"""relaygate's Google Vertex AI provider (`type: vertex`).

Modules, one per concern: `provider` (URLs, wiring), `auth` (google-auth tokens,
refreshed off the event loop), `transport` (the blocking HTTP google-auth refreshes
through), `request` (parameters Vertex takes, image URLs inlined), `errors` (Google
error bodies), `plugin` (the entry point).
"""

__version__ = "0.1.0"
