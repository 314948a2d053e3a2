"""AWS credentials and SigV4 signing for the Bedrock runtime calls we send ourselves.

aiobotocore owns credentials (its default chain, a named profile, static keys, or an
assumed role, all refreshed as they expire) and the control-plane client. The runtime
calls skip botocore's request pipeline (about 1.7 ms of CPU per call) and are signed
here with botocore's own `SigV4Auth` (about 0.1 ms), so the signature is exactly the
one AWS computes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import CredentialProvider

from proxy.config.options import Options
from proxy.errors import ConfigError

#: `create_client` keyword arguments (config, verify) for a service URL.
ClientConfig = Callable[[str], dict[str, Any]]
SIGNING_NAME = "bedrock"  # bedrock-runtime signs as "bedrock" (service model signingName)
_SAFE = "-._~"  # botocore.utils.SAFE_CHARS: what botocore leaves unescaped in a URI label


def model_path(model_id: str, operation: str) -> str:
    """`/model/{modelId}/{operation}` with the id escaped as botocore escapes a URI label.

    `us.anthropic.claude-3-7-sonnet-20250219-v1:0` → `.../us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/...`;
    an ARN's `/` becomes `%2F`. SigV4 then escapes this path once more for its canonical
    request (non-S3 services double-encode), which `SigV4Auth` does by itself.
    """
    return f"/model/{quote(model_id, safe=_SAFE)}/{operation}"


@dataclass(slots=True)
class AwsSettings:
    """The credential keys of a `type: bedrock` block."""

    region: str
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    role_arn: str | None = None
    role_session_name: str = "relaygate"
    external_id: str | None = None
    sts_endpoint_url: str | None = None

    @classmethod
    def from_options(cls, opts: Options, region: str) -> AwsSettings:
        s = cls(
            region=region,
            profile=opts.str("profile", None),
            access_key_id=opts.secret("access_key_id"),
            secret_access_key=opts.secret("secret_access_key"),
            session_token=opts.secret("session_token"),
            role_arn=opts.str("role_arn", None),
            role_session_name=opts.str("role_session_name", "relaygate"),
            external_id=opts.secret("external_id"),
            sts_endpoint_url=opts.url("sts_endpoint_url", None),
        )
        if (s.access_key_id is None) != (s.secret_access_key is None):
            raise opts.error("secret_access_key", "access_key_id and secret_access_key go together")
        if s.session_token and not s.access_key_id:
            raise opts.error("session_token", "session_token needs access_key_id and secret_access_key")
        if s.profile and s.access_key_id:
            raise opts.error("profile", "give either profile or static keys, not both")
        return s


class _Provided(CredentialProvider):
    """Puts our (assumed-role) credentials first in the session's chain, for the control client."""

    METHOD = "relaygate-assume-role"

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


class AwsAuth:
    """One aiobotocore session and its (refreshable) credentials per provider."""

    def __init__(self, settings: AwsSettings, client_config: ClientConfig | None = None) -> None:
        self.settings = settings
        #: `create_client` keyword arguments for a URL (the provider's proxy and TLS settings).
        self.client_config = client_config
        self.session: AioSession | None = None
        self.credentials: Any = None

    def secrets(self) -> list[str]:
        """Static credentials that must never be relayed in an error message."""
        s = self.settings
        return [v for v in (s.secret_access_key, s.session_token, s.access_key_id) if v]

    async def start(self) -> None:
        s = self.settings
        session = AioSession(profile=s.profile) if s.profile else AioSession()
        if s.access_key_id and s.secret_access_key:
            session.set_credentials(s.access_key_id, s.secret_access_key, s.session_token)
        credentials: Any = await session.get_credentials()
        if credentials is None:
            raise ConfigError(
                "bedrock: no AWS credentials found (set access_key_id/secret_access_key, profile, "
                "role_arn, or the standard AWS environment variables)"
            )
        if s.role_arn:
            extra: dict[str, str] = {"RoleSessionName": s.role_session_name}
            if s.external_id:
                extra["ExternalId"] = s.external_id
            sts_url = s.sts_endpoint_url or f"https://sts.{s.region}.amazonaws.com"
            kwargs = self.client_config(sts_url) if self.client_config is not None else {}
            creator = functools.partial(
                session.create_client, region_name=s.region, endpoint_url=s.sts_endpoint_url, **kwargs
            )
            fetcher = AioAssumeRoleCredentialFetcher(  # the stubs type botocore's sync client creator
                client_creator=creator,  # type: ignore[arg-type]
                source_credentials=credentials,
                role_arn=s.role_arn,
                extra_args=extra,
            )
            credentials = AioDeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method="assume-role"
            )
            session.get_component("credential_provider").insert_before("env", _Provided(credentials))
            session._credentials = None  # type: ignore[attr-defined]  # re-resolve through our provider
        self.session = session
        self.credentials = credentials

    async def sign(self, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        """The headers for a signed POST of `body` to `url` (path already escaped).

        `get_frozen_credentials()` is cheap while the keys are fresh and refreshes them
        (once, under a lock) when they are about to expire.
        """
        frozen = await self.credentials.get_frozen_credentials()
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(frozen, SIGNING_NAME, self.settings.region).add_auth(request)
        return dict(request.headers.items())
