"""Fixtures for relaygate-vertex: a service account with a fresh RSA key, fake Google services.

No test may reach Google or a metadata server: the metadata host is pointed at a closed
loopback port, gcloud's config directory at an empty one, and every gateway in these
tests names its `credentials_file` (or sets GOOGLE_APPLICATION_CREDENTIALS itself).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
CORE_TESTS = HERE.parents[2] / "tests"  # openapi_check
AZURE_TESTS = HERE.parents[1] / "azure" / "tests"  # azure_fake, for Vertex -> Azure fallbacks
for _path in (HERE, CORE_TESTS, AZURE_TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from google_fake import GoogleState, make_app  # noqa: E402

from proxy.testing import FakeServer  # noqa: E402

CLIENT_EMAIL = "relaygate-test@my-proj-123.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever a test does, google-auth finds no metadata server and no gcloud login."""
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("no-gcloud")))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def google(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> Iterator[tuple[GoogleState, str, Path]]:
    """Fake Google (token endpoint + Vertex), running: (state, origin URL, service-account file)."""
    state = GoogleState(public_key=rsa_key.public_key(), client_email=CLIENT_EMAIL)
    with FakeServer(lambda: make_app(state)) as server:
        state.token_url = server.url + "/token"
        pem = rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = {
            "type": "service_account",
            "project_id": state.project,
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": state.token_url,
        }
        path = tmp_path / "service-account.json"
        path.write_text(json.dumps(account))
        yield state, server.url, path
