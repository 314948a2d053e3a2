"""Bedrock's model catalogue for `/v1/models`, from the control plane, cached.

Foundation models that produce text on demand, and the cross-region inference profiles
(`us.`, `eu.`, `apac.`, `global.` ...) that newer models can only be called through.
Listing is slow and rate limited, so the answer is kept for `models_ttl` seconds and
a failure keeps serving the last good list.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from proxy.types import ModelInfo

log = logging.getLogger("relaygate.bedrock")
RETRY_AFTER_FAILURE = 30.0
PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


def _created(value: Any) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else 0


def _owner_of_profile(profile_id: str) -> str:
    parts = profile_id.split(".")
    return parts[1] if len(parts) > 2 else "aws"


async def fetch_models(client: Any) -> list[ModelInfo]:
    """One pass over ListFoundationModels and every page of ListInferenceProfiles."""
    models: list[ModelInfo] = []
    seen: set[str] = set()
    answer = await client.list_foundation_models(byOutputModality="TEXT", byInferenceType="ON_DEMAND")
    for summary in answer.get("modelSummaries", ()):
        model_id = summary.get("modelId")
        if (
            not model_id
            or "TEXT" not in summary.get("outputModalities", ("TEXT",))
            or "ON_DEMAND" not in summary.get("inferenceTypesSupported", ("ON_DEMAND",))
            or model_id in seen
        ):
            continue
        seen.add(model_id)
        models.append(ModelInfo(model_id, (summary.get("providerName") or "aws").lower()))
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"maxResults": 1000}
        if token:
            kwargs["nextToken"] = token
        page = await client.list_inference_profiles(**kwargs)
        for profile in page.get("inferenceProfileSummaries", ()):
            pid = profile.get("inferenceProfileId")
            active = profile.get("status", "ACTIVE") == "ACTIVE"
            if pid and pid.startswith(PROFILE_PREFIXES) and pid not in seen and active:
                seen.add(pid)
                models.append(ModelInfo(pid, _owner_of_profile(pid), _created(profile.get("createdAt"))))
        token = page.get("nextToken")
        if not token:
            break
    return models


class ModelCache:
    """The listing, refreshed at most once per TTL, one refresh at a time."""

    def __init__(self, provider: str, ttl: float) -> None:
        self.provider = provider
        self.ttl = ttl
        self._models: list[ModelInfo] | None = None
        self._at = -1e18
        self._lock = asyncio.Lock()

    async def get(self, client_factory: Any) -> list[ModelInfo] | None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._at < self.ttl:
            return self._models
        async with self._lock:
            if loop.time() - self._at < self.ttl:
                return self._models
            try:
                self._models = await fetch_models(await client_factory())
            except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
                # Keep the last good list; the next call after the TTL tries again.
                log.warning("provider %s: Bedrock model listing failed: %s", self.provider, type(exc).__name__)
                if self._models is None:
                    self._models = []
                # Try again sooner than a full TTL, but not on every /v1/models call.
                self._at = loop.time() - self.ttl + min(self.ttl, RETRY_AFTER_FAILURE)
                return self._models
            self._at = loop.time()
        return self._models
