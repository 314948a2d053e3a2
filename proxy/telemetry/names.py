"""Names the metrics and the traces share (no telemetry library imported here)."""

from __future__ import annotations

from typing import Final

from ..types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES

#: `gen_ai.operation.name` of each model endpoint (OpenTelemetry GenAI semantic conventions).
OPERATIONS: Final = {CHAT: "chat", COMPLETIONS: "text_completion", EMBEDDINGS: "embeddings", RESPONSES: "chat"}
#: The `route` label of a request no YAML route served (unknown path or model, model listings).
UNMATCHED: Final = "unmatched"
#: The `client` label on an open gateway (no `clients:` section).
ANONYMOUS: Final = "anonymous"
#: Set by the `--workers` supervisor before it forks: prometheus-client's multiprocess mode.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
