"""One `POST /v1/responses`: its plan before the attempts, and how each attempt is sent.

`plan` runs once, after routing: it loads `previous_response_id` (404 unless this key
created it) and keeps only the targets that can serve the request (a natively stored
previous response lives at one provider; built-in tools need a native target). `send`
then runs per attempt: native targets get the Responses request itself, translating
ones a chat request built once per request, with the answer translated back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest, NotFound, UpstreamError
from ..server.journey import Send
from ..server.runtime import Runtime
from ..types import CHAT, RESPONSES, Call, Reply, Target
from .ids import new_response_id, response_of_item
from .items import normalize
from .native import body_id, relay
from .request import builtin_tool, chat_request, check_request, refuse_tool
from .response import envelope, for_client, from_chat
from .store import Record, ResponseStore
from .stream import StreamTranslator

ENCRYPTED = "reasoning.encrypted_content"


def store_of(runtime: Runtime) -> ResponseStore:
    return ResponseStore(runtime.state, runtime.config.responses)


def previous_not_found(response_id: str) -> NotFound:
    return NotFound(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


@dataclass(eq=False)
class Session:
    call: Call
    store: ResponseStore
    owner: str
    response_id: str = field(default_factory=new_response_id)
    previous: Record | None = None
    input_items: list[dict[str, Any]] | None = None  # this request's input, normalised and resolved
    chat_body: dict[str, Any] | None = None  # built by the first translating attempt

    @property
    def body(self) -> dict[str, Any]:
        assert self.call.body is not None
        return self.call.body

    # -------------------------------------------------------------- plan

    async def prepare(self) -> None:
        body = self.body
        call = self.call
        if body.get("input") is None and body.get("previous_response_id") is None and body.get("prompt") is None:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input",
                                 code="missing_required_parameter")  # fmt: skip
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise InvalidRequest("Invalid type for 'previous_response_id': expected a string.",
                                     param="previous_response_id", code="invalid_type")  # fmt: skip
            self.previous = await self.store.find(previous, self.owner)
            if self.previous is None:
                raise previous_not_found(previous)
            if self.previous.native:
                # The upstream that stored it is the only one that can continue from it.
                kept = [t for t in call.targets if native(t) and t.provider_name == self.previous.provider]
                if not kept:
                    raise InvalidRequest(
                        f"The previous response '{previous}' is stored by provider '{self.previous.provider}', "
                        f"which the model '{call.model}' is not routed to.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    )
                call.targets = kept
        tool = builtin_tool(body)
        if tool is not None:
            kept = [t for t in call.targets if native(t)]
            if not kept:
                raise refuse_tool(*tool)
            call.targets = kept

    # -------------------------------------------------------------- attempts

    async def send(self, call: Call, target: Target) -> Reply:
        if native(target):
            return await self._native(call, target)
        return await self._translated(call, target)

    async def _native(self, call: Call, target: Target) -> Reply:
        body = self.body
        sent = call
        if self.previous is not None and not self.previous.native:
            sent = self._expanded(call)
        reply = await target.provider.send(sent, target)
        if sent is not call:
            call.usage = sent.usage
        keep = body.get("store") is not False
        provider = target.provider_name
        if reply.stream is not None:

            async def own(response_id: str) -> None:
                await self.store.own(response_id, self.owner, provider)

            return Reply(reply.status, stream=relay(call, reply.stream, own if keep else None),
                         headers=reply.headers, content_type=reply.content_type)  # fmt: skip
        if keep and reply.status == 200 and reply.body:
            response_id = body_id(reply.body)
            if response_id is not None:
                await self.store.own(response_id, self.owner, provider)
        return reply

    def _expanded(self, call: Call) -> Call:
        """The request with the gateway-stored conversation spelt out as input, for a native target."""
        assert self.previous is not None
        raw = self.body.get("input")
        new = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or ())
        history = [
            {k: v for k, v in item.items() if k != "id"}
            for item in self.previous.conversation()
            if item["type"] != "reasoning"  # signed by another provider: meaningless upstream
        ]
        body = {k: v for k, v in self.body.items() if k != "previous_response_id"}
        body["input"] = history + new
        return derived(call, RESPONSES, body)

    async def _conversation(self) -> tuple[list[dict[str, Any]], int]:
        """(every item the model sees, index of the first of this request's own)."""
        if self.input_items is None:
            items = normalize(self.body.get("input") or [], self.response_id)
            await self._resolve(items)
            self.input_items = items
        context = self.previous.conversation() if self.previous is not None else []
        return context + self.input_items, len(context)

    async def _resolve(self, items: list[dict[str, Any]]) -> None:
        """Replace item references, and fill reasoning items sent back without their content."""
        records: dict[str, Record | None] = {}
        for i, item in enumerate(items):
            kind = item["type"]
            if kind == "reasoning" and item.get("encrypted_content") is not None:
                continue
            if kind not in ("reasoning", "item_reference"):
                continue
            owner_id = response_of_item(item["id"])
            if owner_id is not None and owner_id not in records:
                records[owner_id] = await self.store.find(owner_id, self.owner)
            record = records.get(owner_id) if owner_id is not None else None
            found = _find_item(record, item["id"]) if record is not None else None
            if kind == "item_reference":
                if found is None:
                    raise NotFound(f"Item with id '{item['id']}' not found.", param=f"input[{i}]", code="not_found")
                items[i] = found
            elif found is not None and found.get("encrypted_content") is not None:
                items[i] = {**item, "encrypted_content": found["encrypted_content"]}

    async def _translated(self, call: Call, target: Target) -> Reply:
        body = self.body
        if self.chat_body is None:
            check_request(body)
            items, first = await self._conversation()
            self.chat_body = chat_request(body, items, first)
        chat_body = self.chat_body
        if "stream_options" in chat_body and getattr(target.provider, "stream_usage", True) is False:
            chat_body = {k: v for k, v in chat_body.items() if k != "stream_options"}
        chat = derived(call, CHAT, chat_body)
        reply = await target.provider.send(chat, target)
        response = envelope(body, self.response_id, target.model)
        encrypted = ENCRYPTED in (body.get("include") or ())
        if reply.stream is not None:
            translator = StreamTranslator(call, chat, response, encrypted, self._keep)
            return Reply(reply.status, stream=translator.run(reply.stream), headers=reply.headers,
                         content_type="text/event-stream")  # fmt: skip
        try:
            data = orjson.loads(reply.body or b"")
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {target.provider_name!r} sent an answer that is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {target.provider_name!r} sent an unexpected answer")
        from_chat(data, response)
        call.usage = chat.usage
        await self._keep(response)
        return Reply(reply.status, body=orjson.dumps(for_client(response, encrypted)), headers=reply.headers)

    async def _keep(self, response: dict[str, Any]) -> None:
        """Store a finished translated response unless the request said `store: false`."""
        if self.body.get("store") is False:
            return
        context = self.previous.conversation() if self.previous is not None else None
        record = Record(self.owner, response=response, context=context, input=self.input_items or [])
        await self.store.save(self.response_id, record)


def native(target: Target) -> bool:
    return target.provider.responses == "native"


def derived(call: Call, endpoint: str, body: dict[str, Any] | None, *, method: str = "POST",
            path: str | None = None, query: str = "") -> Call:  # fmt: skip
    """What is sent upstream on the client's behalf: its request as `endpoint` with `body`."""
    return Call(
        request_id=call.request_id,
        endpoint=endpoint,
        method=method,
        path=path or endpoint,
        query_string=query,
        headers=call.headers,
        config=call.config,
        body=body,
        model=call.model,
        stream=call.stream,
        client=call.client,
        targets=call.targets,
        target=call.target,
        upstream_headers=call.upstream_headers,
        body_dirty=body is not None,
    )


def _find_item(record: Record, wanted: str) -> dict[str, Any] | None:
    if record.response is None:
        return None
    output: list[dict[str, Any]] = record.response["output"]
    for items in (record.input or [], output):
        for item in items:
            if item.get("id") == wanted:
                return item
    return None


async def plan(runtime: Runtime, call: Call) -> Send:
    """The Responses API's `Plan` for `Forwarder.model_call`: prepare, then send per target."""
    assert call.client is not None
    session = Session(call, store_of(runtime), call.client.name)
    await session.prepare()
    return session.send
