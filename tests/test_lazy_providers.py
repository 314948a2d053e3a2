"""register("type", "module:Class") defers a provider's import until a config uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from proxy import hookimpl
from proxy.errors import ConfigError
from proxy.server.runtime import load_runtime
from proxy.testing import Gateway


class LazyPlugin:
    @hookimpl
    def register_providers(self, register):  # type: ignore[no-untyped-def]
        register("lazy-demo", "proxy.builtin.demo:DemoProvider")
        register("broken", "no_such_module_xyz:Provider")


CONFIG = """
providers:
  d: {type: lazy-demo}
routes:
  - {model: "*", to: d}
"""


def test_lazy_reference_serves() -> None:
    with Gateway(CONFIG, extra_plugins=[("lazy", LazyPlugin())]) as gw, openai.OpenAI(
        base_url=gw.base_url, api_key="k"
    ) as client:
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content.endswith("hi")


def test_unimportable_reference_is_a_config_error_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  x:\n    type: broken\n")
    with pytest.raises(ConfigError) as info:
        load_runtime(path, extra_plugins=[("lazy", LazyPlugin())])
    assert f"{path}:3: providers.x.type:" in str(info.value)
    assert "no_such_module_xyz" in str(info.value)


def test_unused_cloud_plugins_import_no_cloud_sdk() -> None:
    """Registered but unconfigured, Bedrock and Vertex cost no aiobotocore/google-auth import."""
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    code = (
        "import sys; from proxy.server.runtime import load_runtime; "
        f"load_runtime({str(example)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiobotocore', 'botocore', 'google')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
