"""/metrics after a known mix of traffic: every count exact, every label from config or a closed set."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import openai
import orjson
import pytest
from core_helpers import CLIENT_KEY, LIMITED_KEY, UPSTREAM_KEY, config_yaml, post_json, raw, until
from fakes.openai_upstream import Behaviour, FakeOpenAI, free_port
from telemetry_helpers import Scrape, scrape

from proxy.errors import ERROR_TYPES
from proxy.testing import Gateway

CHAT = [{"role": "user", "content": "count these five words"}]
FAMILIES = {
    "gen_ai_client_token_usage": "histogram",
    "gen_ai_server_request_duration_seconds": "histogram",
    "gen_ai_server_time_to_first_token_seconds": "histogram",
    "relaygate_requests": "counter",
    "relaygate_fallbacks": "counter",
    "relaygate_retries": "counter",
    "relaygate_limit_rejections": "counter",
    "relaygate_breaker_open": "gauge",
    "relaygate_inflight_requests": "gauge",
    "relaygate_tokens": "counter",
    "relaygate_cost_usd": "counter",
    "relaygate_config_reloads": "counter",
}
REQUEST_ID = "rid-must-not-be-a-label-7c1e"


def _config(upstream: FakeOpenAI) -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = f"  down: {{type: openai, base_url: \"{dead}\", api_key: x, connect_timeout: 2}}\n"
    routes = (
        "  - {model: gpt-4o, to: up}\n"
        "  - {model: fb-model, to: [{provider: down, model: gpt-4o-mini}, {provider: up, model: gpt-4o-mini}]}\n"
        "  - {model: \"*\", to: up}\n"
    )
    return config_yaml(upstream.url, extra_providers=providers, routes=routes)


@pytest.fixture
def gw(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(_config(upstream))


def test_every_family_is_exposed_from_start_up(gw: Gateway) -> None:
    got = scrape(gw.url)
    assert {name: got.families[name].type for name in FAMILIES} == FAMILIES
    assert got.total("relaygate_inflight_requests") == 0
    assert got.total("relaygate_breaker_open", provider="up") == 0
    assert got.total("relaygate_config_reloads_total", result="success") == 0
    assert got.total("relaygate_config_reloads_total", result="failure") == 0
    assert len(got.select("relaygate_limit_rejections_total")) == 12  # every scope x kind, at 0
    assert not got.select("relaygate_requests_total")  # nothing counted before traffic


def test_a_known_mix_of_traffic_is_counted_exactly(gw: Gateway, upstream: FakeOpenAI) -> None:
    upstream.on("broken", Behaviour(status=500))
    upstream.on("nope-1", Behaviour(status=404))
    upstream.on("nope-2", Behaviour(status=404))
    prompt = completion = 0
    with openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as client:
        for _ in range(3):
            resp = client.chat.completions.create(model="gpt-4o", messages=CHAT,
                                                  extra_headers={"x-request-id": REQUEST_ID})
            assert resp.usage is not None
            prompt, completion = prompt + resp.usage.prompt_tokens, completion + resp.usage.completion_tokens
        for _ in range(2):
            chunks = list(client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True,
                                                         stream_options={"include_usage": True}))
            usage = chunks[-1].usage
            assert usage is not None
            prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
        fb = client.chat.completions.create(model="fb-model", messages=CHAT)  # down is refused: falls back to up
        assert fb.usage is not None
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="broken", messages=CHAT)
        for name in ("nope-1", "nope-2"):  # names a client invents are not label values
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=name, messages=CHAT)
    with openai.OpenAI(base_url=gw.base_url, api_key=LIMITED_KEY, max_retries=0) as limited, \
            pytest.raises(openai.PermissionDeniedError):
        limited.chat.completions.create(model="o3-secret", messages=CHAT)
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT},
                     key="sk-wrong-key-0000").status == 401
    assert raw("POST", f"{gw.base_url}/chat/completions", b"{not json").status == 400
    assert raw("GET", f"{gw.url}/nope/secret-path?token=abc").status == 404

    # A request is counted once its response has ended, a moment after the client has it.
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 13)
    got = scrape(gw.url)
    count = got.total

    def requests(**labels: str) -> float:
        return count("relaygate_requests_total", **labels)

    assert requests(route="gpt-4o", model="gpt-4o", provider="up", client="team-a", status="200", error_type="") == 5
    assert requests(route="fb-model", model="fb-model", provider="up", status="200", error_type="") == 1
    assert requests(route="*", model="broken", provider="up", status="500", error_type="upstream_error") == 1
    assert requests(route="*", model="", provider="up", status="404", error_type="upstream_not_found") == 2
    assert requests(route="unmatched", model="", client="limited", status="403", error_type="client_permission") == 1
    assert requests(route="unmatched", client="", status="401", error_type="client_auth") == 1
    assert requests(route="unmatched", client="team-a", status="400", error_type="client_bad_request") == 1  # key first
    assert requests(route="unmatched", client="", provider="", status="404", error_type="client_not_found") == 1
    assert count("relaygate_fallbacks_total") == 1
    assert count("relaygate_fallbacks_total", provider="down", reason="upstream_unavailable") == 1
    assert count("relaygate_retries_total") == 0

    assert fb.usage is not None
    assert count("relaygate_tokens_total", client="team-a", model="gpt-4o", type="input") == prompt
    assert count("relaygate_tokens_total", client="team-a", model="gpt-4o", type="output") == completion
    assert count("relaygate_tokens_total", model="fb-model", type="input") == fb.usage.prompt_tokens
    assert count("relaygate_tokens_total", type="cached_input") == 0
    genai = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "gpt-4o", "gen_ai_provider_name": "up"}
    assert count("gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="input") == prompt
    assert count("gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="output") == completion
    assert count("gen_ai_client_token_usage_count", **genai, gen_ai_token_type="input") == 5
    assert count("gen_ai_server_request_duration_seconds_count", **genai) == 5
    assert count("gen_ai_server_time_to_first_token_seconds_count", **genai) == 2  # the streams
    assert count("gen_ai_server_request_duration_seconds_count") == 12  # every model endpoint call
    assert count("relaygate_inflight_requests") == 0
    _labels_are_bounded(got)


def _labels_are_bounded(got: Scrape) -> None:
    """No label carries a key, a request id, a raw path or free text."""
    values = {v for s in got.samples for v in s.labels.values()}
    for secret in (CLIENT_KEY, LIMITED_KEY, UPSTREAM_KEY, "sk-wrong-key-0000", REQUEST_ID):
        assert not any(secret in v for v in values), secret
    assert not any("/" in v or "?" in v for v in values), "a path in a label"
    assert got.label_values("error_type") <= {"", *ERROR_TYPES}
    assert got.label_values("reason") <= set(ERROR_TYPES)
    assert got.label_values("route") <= {"gpt-4o", "fb-model", "*", "unmatched"}
    assert got.label_values("client") <= {"team-a", "limited", ""}
    assert got.label_values("provider") <= {"up", "down", "demo", ""}
    assert got.label_values("model") <= {"gpt-4o", "fb-model", "broken", ""}
    assert all(v.isdigit() for v in got.label_values("status"))


def test_reload_results_are_counted(gw: Gateway, upstream: FakeOpenAI) -> None:
    assert gw.reload(_config(upstream))
    assert not gw.reload("providers: [1]\n")
    assert gw.reload(_config(upstream))
    got = scrape(gw.url)
    assert got.total("relaygate_config_reloads_total", result="success") == 2
    assert got.total("relaygate_config_reloads_total", result="failure") == 1


def test_open_gateway_counts_anonymous(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(config_yaml(upstream.url, clients=False))
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT}, key=None).status == 200
    assert raw("GET", f"{gw.url}/unknown", key=None).status == 404
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 2)
    got = scrape(gw.url)
    assert got.total("relaygate_requests_total", client="anonymous", status="200", route="*") == 1
    assert got.total("relaygate_requests_total", client="anonymous", route="unmatched", status="404") == 1


def test_openmetrics_when_asked_for(gw: Gateway) -> None:
    resp = raw("GET", f"{gw.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200 and resp.header("Content-Type").startswith("application/openmetrics-text")
    assert resp.body.rstrip().endswith(b"# EOF")


def test_metrics_answers_get_only(gw: Gateway) -> None:
    resp = raw("POST", f"{gw.url}/metrics", b"{}")
    assert resp.status == 405 and resp.json["error"]["code"] == "method_not_allowed"


def test_metrics_off_removes_the_route_and_is_never_imported(tmp_path: object) -> None:
    """`telemetry.metrics: false`: /metrics is an unknown URL and prometheus-client is not loaded."""
    script = textwrap.dedent("""
        import sys, urllib.request, urllib.error, orjson
        from proxy.testing import Gateway
        config = ("telemetry: {metrics: false}\\n"
                  "providers:\\n  demo: {type: demo}\\nroutes:\\n  - {model: '*', to: demo}\\n")
        with Gateway(config) as gw:
            body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            req = urllib.request.Request(gw.base_url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            assert urllib.request.urlopen(req).status == 200
            try:
                urllib.request.urlopen(gw.url + "/metrics")
            except urllib.error.HTTPError as exc:
                print(exc.code, orjson.loads(exc.read())["error"]["code"])
        print(sorted(m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry"))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["404 unknown_url", "[]"]


def test_reload_can_turn_metrics_off_and_on(gw: Gateway, upstream: FakeOpenAI) -> None:
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT}).status == 200
    assert gw.reload("telemetry: {metrics: false}\n" + _config(upstream))
    assert raw("GET", f"{gw.url}/metrics").status == 404
    assert post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT}).status == 200
    assert gw.reload(_config(upstream))
    got = scrape(gw.url)
    assert got.total("relaygate_requests_total") == 1  # the one served while off was not counted
    assert got.total("relaygate_config_reloads_total", result="success") == 2


def test_unknown_telemetry_keys_are_config_errors(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"telemetry\.metric: unknown key"):
        make_gateway("telemetry: {metric: false}\n" + _config(upstream))
    with pytest.raises(ConfigError, match=r"telemetry\.otlp\.endpoint: expected an http\(s\) URL"):
        make_gateway("telemetry: {otlp: {endpoint: 'grpc://x:4317'}}\n" + _config(upstream))


def test_inflight_gauge_counts_open_streams(upstream: FakeOpenAI, gw: Gateway) -> None:
    upstream.on("slow", Behaviour(chunk_delay=0.2, words=30))
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    conn.request("POST", "/v1/chat/completions", orjson.dumps({"model": "slow", "messages": CHAT, "stream": True}),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"})
    resp = conn.getresponse()
    assert resp.read1()
    try:
        assert scrape(gw.url).total("relaygate_inflight_requests") == 1
    finally:
        conn.close()


def test_flushed_histograms_equal_what_observe_gives() -> None:
    """The per-request path adds to plain bucket lists; a flush must equal prometheus-client's own observe."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from proxy.telemetry.metrics import DURATION_BUCKETS, TOKEN_BUCKETS, _Buckets

    for bounds, values in ((DURATION_BUCKETS, [0.0, 0.01, 0.0100001, 0.3, 81.92, 81.93, 1e9]),
                           (TOKEN_BUCKETS, [0, 1, 2, 4, 5, 1024, 67108864, 67108865])):
        mine, theirs = CollectorRegistry(), CollectorRegistry()
        observed = Histogram("h", "h", buckets=bounds, registry=theirs)
        flushed = Histogram("h", "h", buckets=bounds, registry=mine)
        pending = _Buckets(bounds)
        for value in values:
            observed.observe(value)
            pending.observe(value)
        pending.flush_into(flushed)
        assert generate_latest(mine) == generate_latest(theirs)


def test_names_a_client_invents_under_a_glob_route_are_capped(
    gw: Gateway, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake answers any model: past the cap a glob route's new names are an empty label."""
    from proxy.telemetry import metrics

    monkeypatch.setattr(metrics, "MAX_GLOB_MODELS", 3)
    names = [f"made-up-{i}" for i in range(6)]
    for name in names:
        assert post_json(f"{gw.base_url}/chat/completions", {"model": name, "messages": CHAT}).status == 200
    assert post_json(f"{gw.base_url}/chat/completions", {"model": names[0], "messages": CHAT}).status == 200
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 7)
    got = scrape(gw.url)
    assert got.label_values("model") == {*names[:3], ""}
    assert got.total("relaygate_requests_total", model=names[0]) == 2  # a known name stays known
    assert got.total("relaygate_requests_total", model="") == 3


def test_responses_api_requests_are_counted(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    """POST /v1/responses is a GenAI `chat` operation; reading a stored response is counted, not timed."""
    from responses_helpers import responses_config

    gw = make_gateway(responses_config(upstream.url))
    created = post_json(f"{gw.base_url}/responses", {"model": "gpt-4o", "input": "count me"})
    assert created.status == 200, created.body
    assert raw("GET", f"{gw.base_url}/responses/{created.json['id']}").status == 200
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 2)
    got = scrape(gw.url)
    assert got.total("relaygate_requests_total", model="gpt-4o", provider="up", status="200") == 1
    assert got.total("gen_ai_server_request_duration_seconds_count", gen_ai_operation_name="chat") == 1
    usage = created.json["usage"]
    cached = usage["input_tokens_details"]["cached_tokens"]
    assert got.total("relaygate_tokens_total", model="gpt-4o", type="input") == usage["input_tokens"] - cached
    assert got.total("relaygate_tokens_total", model="gpt-4o", type="cached_input") == cached
    assert got.total("relaygate_tokens_total", model="gpt-4o", type="output") == usage["output_tokens"]


def test_limit_rejections_and_cost_are_counted(upstream: FakeOpenAI, make_gateway: Callable[..., Gateway]) -> None:
    text = _config(upstream).replace(
        '    - {name: team-a, key: "${CLIENT_KEY}"}\n',
        '    - {name: team-a, key: "${CLIENT_KEY}", limits: {rpm: 2}}\n',
    ).replace("  - {model: gpt-4o, to: up}\n",
              "  - {model: gpt-4o, to: up, price: {input: 1000000, output: 2000000}}\n")  # USD per token: 1 and 2
    gw = make_gateway(text)
    statuses = [post_json(f"{gw.base_url}/chat/completions", {"model": "gpt-4o", "messages": CHAT}) for _ in range(3)]
    assert [r.status for r in statuses] == [200, 200, 429]
    assert until(lambda: scrape(gw.url).total("relaygate_requests_total") == 3)
    got = scrape(gw.url)
    assert got.total("relaygate_limit_rejections_total", scope="key", kind="requests") == 1
    assert got.total("relaygate_limit_rejections_total") == 1
    assert got.total("relaygate_requests_total", status="429", error_type="limit_requests", client="team-a") == 1
    usage = [r.json["usage"] for r in statuses[:2]]
    expected = sum(u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0 for u in usage)  # USD at these prices
    assert got.total("relaygate_cost_usd_total", client="team-a", model="gpt-4o") == pytest.approx(expected)
