"""The example plugin is discovered through its entry point and works end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import orjson

from proxy.testing import Gateway

CONFIG = """
providers:
  echo: {type: echo}
  demo: {type: demo}
routes:
  - model: "echo-*"
    to: echo
  - model: "*"
    to: demo
"""


def test_listed_by_relaygate_plugins() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "plugins"], check=True, capture_output=True, text=True).stdout
    echo = next(p for p in json.loads(out) if p["plugin"] == "echo")
    assert echo["distribution"] == "relaygate-echo"
    assert echo["provider_types"] == ["echo"]
    assert echo["hooks"] == ["register_providers", "rewrite_request"]


def test_provider_and_hook_run_through_the_gateway() -> None:
    with Gateway(CONFIG) as gw, openai.OpenAI(base_url=gw.base_url, api_key="k") as client:
        reply = client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])
        sent = orjson.loads(reply.choices[0].message.content or "")
        assert sent["model"] == "echo-1"
        assert sent["user"] == "relaygate-echo"  # added by the plugin's rewrite_request

        own = client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}], user="me")
        assert orjson.loads(own.choices[0].message.content or "")["user"] == "me"

        # Other providers' traffic is untouched by the hook.
        demo = client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
        assert demo.choices[0].message.content.endswith("hi")
