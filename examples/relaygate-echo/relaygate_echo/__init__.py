"""An example third-party relaygate plugin, written exactly as any other would be.

- `type: echo` answers every chat call with the JSON body it would have sent upstream,
  which makes the effect of the hook chain visible.
- `rewrite_request` sets a default `user` field on calls to echo targets when the client
  sent none, showing how a plugin edits what goes upstream without touching other
  providers' traffic.
"""

from __future__ import annotations

import time

import orjson

from proxy import RegisterProvider, hookimpl
from proxy.types import CHAT, Call, Reply, Target
from proxy.upstream.provider import Provider

DEFAULT_USER = "relaygate-echo"


class EchoProvider(Provider):
    endpoints = frozenset({CHAT})

    async def send(self, call: Call, target: Target) -> Reply:
        sent = call.upstream_body(target).decode()
        body = {
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": target.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": sent, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        }
        return Reply(body=orjson.dumps(body))


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("echo", EchoProvider)


@hookimpl
def rewrite_request(call: Call) -> None:
    if call.body is None or "user" in call.body:
        return
    for target in call.targets:
        if isinstance(target.provider, EchoProvider):
            target.body_extra.setdefault("user", DEFAULT_USER)
