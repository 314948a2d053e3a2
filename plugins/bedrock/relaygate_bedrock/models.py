"""Bedrock's model catalogue for `/v1/models`, from the control plane, cached.

Foundation models that produce text on demand, and the cross-region inference profiles
(`us.`, `eu.`, `apac.`, `global.` ...) that newer models can only be called through.
Listing is slow and rate limited, so the provider keeps the answer for `models_ttl`
seconds in the core's single-flight `TTLCache`, and a failure keeps serving the last good list.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.types import ModelInfo

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
