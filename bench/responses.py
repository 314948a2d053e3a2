"""CPU cost of the Responses API translated onto a provider's chat path, beside the same chat request.

    python bench/responses.py                # micro + end to end, ~1 minute
    python bench/responses.py --micro-only

Budgets (issue 12): a translated Responses request costs at most 1.5x the gateway CPU of
the same chat request on the same provider; a translated streamed event at most 20 µs.

1. Micro (in process): per request, Responses body → chat body → orjson, and chat answer →
   Response → orjson; per streamed event, chat chunk → Responses events.
2. End to end (loopback processes): a relaygate gateway in front of bench/mock_upstream.py
   seen as a chat-only server (`responses: translate`), load from bench/loadgen.py at one
   connection; gateway CPU per request from /proc, chat and Responses interleaved.

Nothing here talks to a non-loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from bedrock import _free_port, _wait, measure, print_results, stop_all
from run import chat_body, chat_request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
CLIENT_KEY = "sk-client-bench-0123456789"


def responses_request(stream: bool, model: str = "bench-model") -> dict[str, Any]:
    """run.py's ~1 KB chat request, as a Responses request."""
    chat = chat_request(stream, model)
    body: dict[str, Any] = {
        "model": model,
        "instructions": chat["messages"][0]["content"],
        "input": chat["messages"][1]["content"],
        "temperature": chat["temperature"],
        "max_output_tokens": chat["max_tokens"],
    }
    if stream:
        body["stream"] = True
    return body


CHAT_ANSWER = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Benchmarks measure what they measure. " * 25},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 250, "completion_tokens": 200, "total_tokens": 450},
}  # fmt: skip


def chat_stream_blocks(chunks: int) -> list[bytes]:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "bench-model"}
    blocks = [b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                            "finish_reason": None}]}) + b"\n\n"]  # fmt: skip
    for i in range(chunks):
        delta = {"index": 0, "delta": {"content": f" token{i}"}, "finish_reason": None}
        blocks.append(b"data: " + orjson.dumps({**head, "choices": [delta]}) + b"\n\n")
    blocks.append(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                  + b"\n\n")  # fmt: skip
    usage = {"prompt_tokens": 250, "completion_tokens": chunks, "total_tokens": 250 + chunks}
    blocks.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n")
    return blocks


# ---------------------------------------------------------------- micro


def _cpu_per_call(fn: Any, n: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


async def micro(n: int, chunks: int) -> None:
    from proxy.responses.items import normalize
    from proxy.responses.request import chat_request as to_chat
    from proxy.responses.request import check_request
    from proxy.responses.response import envelope, for_client, from_chat
    from proxy.responses.stream import StreamTranslator
    from proxy.types import Call

    raw = orjson.dumps(responses_request(False))
    answer = orjson.dumps(CHAT_ANSWER)

    def request_side() -> None:
        body = orjson.loads(raw)
        check_request(body)
        items = normalize(body["input"], "resp_" + "0" * 48)
        orjson.dumps(to_chat(body, items, 0))

    def response_side() -> None:
        body = orjson.loads(raw)
        response = from_chat(orjson.loads(answer), envelope(body, "resp_" + "0" * 48, "bench-model"))
        orjson.dumps(for_client(response, False))

    blocks = chat_stream_blocks(chunks)
    call = Call(request_id="r", endpoint="responses", method="POST", path="responses", query_string="",
                headers=None, config=None)  # type: ignore[arg-type]  # fmt: skip

    async def done(response: dict[str, Any]) -> None:
        return None

    async def upstream() -> Any:
        for block in blocks:
            yield block

    async def one_stream() -> None:
        body = responses_request(True)
        translator = StreamTranslator(call, call, envelope(body, "resp_" + "0" * 48, "bench-model"), False, done)
        async for _ in translator.run(upstream()):
            pass

    print("## Micro (CPU per call, this process)\n")
    print("| step | µs |\n|---|---:|")
    print(f"| Responses body → chat body → orjson | {_cpu_per_call(request_side, n) * 1e6:.1f} |")
    print(f"| chat answer → Response → orjson | {_cpu_per_call(response_side, n) * 1e6:.1f} |")
    rounds = max(20, n // 50)
    await one_stream()
    t0 = time.process_time()
    for _ in range(rounds):
        await one_stream()
    per_event = (time.process_time() - t0) / rounds / len(blocks)
    print(f"| streamed chat chunk → Responses events (stream of {chunks}) | {per_event * 1e6:.2f} |\n")


# ---------------------------------------------------------------- end to end


async def end_to_end(duration: float, chunks: int, rounds: int) -> None:
    from loadgen import build_request

    work = Path(tempfile.mkdtemp(prefix="bench-responses-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], port: int, name: str) -> subprocess.Popen[bytes]:
        with open(work / f"{name}.out", "wb") as out, open(work / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        procs.append(proc)
        _wait(port, proc)
        return proc

    try:
        up_port, gw_port = _free_port(), _free_port()
        spawn([sys.executable, str(HERE / "mock_upstream.py"), "--port", str(up_port), "--chunks", str(chunks)],
              up_port, "mock-openai")  # fmt: skip
        config = work / "gateway.yaml"
        config.write_text(
            "server: {host: 127.0.0.1, log_level: INFO}\n"
            f"clients:\n  keys:\n    - {{name: bench, key: {CLIENT_KEY}}}\n"
            "providers:\n"
            f"  up: {{type: openai, base_url: 'http://{HOST}:{up_port}/v1', api_key: sk-bench, responses: translate}}\n"
            "responses: {ttl: 60}\n"
            'routes:\n  - {model: "*", to: up}\n'
        )
        gw = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(gw_port)],
                   gw_port, "gateway")  # fmt: skip
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
        cells = [
            ("chat", "/v1/chat/completions", chat_body(False)),
            ("Responses, translated", "/v1/responses", orjson.dumps(responses_request(False))),
            ("chat stream", "/v1/chat/completions", chat_body(True)),
            ("Responses stream, translated", "/v1/responses", orjson.dumps(responses_request(True))),
        ]
        requests = [(name, build_request(HOST, gw_port, path, body, headers)) for name, path, body in cells]
        results = await measure(gw, gw_port, requests, duration, rounds, work)
        print(f"## End to end (gateway process CPU per request, 1 connection, {chunks} chunks per stream, "
              f"median of {rounds} rounds of {duration:g} s)\n")
        medians = print_results(results)
        print(f"Responses / chat CPU: {medians['Responses, translated'] / medians['chat']:.2f}x (budget 1.5x); "
              f"stream: {medians['Responses stream, translated'] / medians['chat stream']:.2f}x")
        extra = (medians["Responses stream, translated"] - medians["Responses, translated"]) / (chunks + 3)
        print(f"Translated stream cost per event beyond a non-stream request: {extra * 1e6:.1f} µs (budget 20 µs)")
    finally:
        stop_all(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--n", type=int, default=5000, help="micro iterations")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per end-to-end cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=20, help="content events per stream")
    args = parser.parse_args()
    asyncio.run(micro(args.n, args.chunks))
    if not args.micro_only:
        asyncio.run(end_to_end(args.duration, args.chunks, args.rounds))


if __name__ == "__main__":
    main()
