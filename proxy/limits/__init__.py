"""Limits, budgets and cost (DESIGN §4 "Limits and budgets").

Admission is one atomic reservation across every scope of a request (client key, route,
provider), shared by every process through `proxy.state` (one Lua script on Redis, the
same logic in process otherwise), settled to the real usage when the response ends.
`config` reads the YAML; `admission` decides per request; `windows` holds the counters.
"""
