"""Stored responses and the owners of natively passed-through ids, on `runtime.state`.

One key per response id (`responses:<id>`), so a lookup is one read whether the gateway
answered the response itself or an upstream did:

- a translated response: its owner, the `Response` object (reasoning items keep their
  encrypted content, so a tool loop can go on from the store), the items the model saw
  before it (`context`) and its own input items;
- a native one: only its owner and the provider that holds it.

Another key's id reads as absent: the caller answers 404, never 403, so ids do not leak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from ..config.load import ResponsesSettings
from ..errors import GatewayError
from ..state import StateUnavailable, Store

log = logging.getLogger("relaygate.responses")
_PREFIX = "responses:"


class StateDown(GatewayError):
    """The shared state cannot be read: stored responses are unknown for now."""

    status = 503
    type = "server_error"
    default_code = "state_unavailable"
    error_type = "gateway_internal"


@dataclass(slots=True)
class Record:
    """What the store knows of one response id."""

    owner: str
    provider: str | None = None  # set for a native response: the provider that stores it
    response: dict[str, Any] | None = None  # translated responses only
    context: list[dict[str, Any]] | None = None
    input: list[dict[str, Any]] | None = None

    @property
    def native(self) -> bool:
        return self.response is None

    def conversation(self) -> list[dict[str, Any]]:
        """Every item a response chained to this one continues from."""
        assert self.response is not None
        return [*(self.context or ()), *(self.input or ()), *self.response["output"]]


class ResponseStore:
    def __init__(self, state: Store, settings: ResponsesSettings) -> None:
        self.state = state
        self.settings = settings

    async def find(self, response_id: str, owner: str) -> Record | None:
        """The record of `response_id` if `owner` created it; None otherwise (or if expired)."""
        try:
            raw = await self.state.get(_PREFIX + response_id)
        except StateUnavailable as exc:
            raise StateDown("Stored responses are unavailable right now; try again shortly.") from exc
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            record = Record(
                data["owner"], data.get("provider"), data.get("response"), data.get("context"), data.get("input")
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("stored response %s is unreadable; treating it as absent", response_id)
            return None
        return record if record.owner == owner else None

    async def save(self, response_id: str, record: Record) -> bool:
        """Keep a translated response for `responses.ttl`; False when it was too large or the state is down."""
        data: dict[str, Any] = {"owner": record.owner, "response": record.response}
        if record.context:
            data["context"] = record.context
        data["input"] = record.input or []
        raw = orjson.dumps(data)
        if len(raw) > self.settings.max_bytes:
            log.warning(
                "response %s is not stored: %d bytes exceed responses.max_bytes (%d)",
                response_id,
                len(raw),
                self.settings.max_bytes,
            )
            return False
        return await self._set(response_id, raw, self.settings.ttl)

    async def own(self, response_id: str, owner: str, provider: str) -> bool:
        """Remember who created a natively passed-through id, and where it is stored."""
        raw = orjson.dumps({"owner": owner, "provider": provider})
        return await self._set(response_id, raw, self.settings.ownership_ttl)

    async def delete(self, response_id: str) -> bool:
        try:
            return await self.state.delete(_PREFIX + response_id)
        except StateUnavailable as exc:
            raise StateDown("Stored responses are unavailable right now; try again shortly.") from exc

    async def _set(self, response_id: str, raw: bytes, ttl: float) -> bool:
        try:
            await self.state.set(_PREFIX + response_id, raw, ttl)
        except StateUnavailable:
            log.warning("response %s is not stored: the shared state is unreachable", response_id)
            return False
        return True
