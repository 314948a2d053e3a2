"""The YAML config: loading with line numbers, `${VAR}` interpolation, validation.

`load_config` either returns a complete, validated `Config` (providers built but not
started) or raises one `ConfigError` listing every problem as
`file:line: key.path: what was expected`. Nothing here does network I/O.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from ..limits.config import (
    Budget,
    Limits,
    Price,
    ProviderPolicy,
    Strategy,
    read_budget,
    read_limits,
    read_price,
    read_provider_policy,
    read_strategy,
    read_weight,
)
from ..telemetry.settings import TelemetrySettings, parse_telemetry
from ..types import RESPONSES, Guardrail
from ..upstream.provider import Provider, ProviderRef, resolve_provider
from .options import Locator, Options, format_path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


@dataclass(slots=True, frozen=True)
class ClientKey:
    name: str
    digest: bytes  # sha256 of the key; the key itself is not kept
    models: tuple[str, ...] | None
    limits: Limits | None = None
    budget: Budget | None = None


@dataclass(slots=True, frozen=True)
class TargetSpec:
    provider: str
    model: str | None  # None: the client's model name; may contain "{model}"
    options: Mapping[str, Any]
    weight: float = 1.0  # share of first attempts under `strategy: weighted`


@dataclass(slots=True, frozen=True)
class Route:
    model: str  # glob over client-facing model names
    targets: tuple[TargetSpec, ...]
    guardrail: Guardrail | None
    line: int
    limits: Limits | None = None  # the model, all keys together
    price: Price | None = None
    default_max_tokens: int | None = None  # the output estimate when a request sets none
    strategy: Strategy = "fallback"

    @property
    def is_glob(self) -> bool:
        return any(ch in self.model for ch in "*?[")

    def upstream_model(self, spec: TargetSpec, model: str) -> str:
        return model if spec.model is None else spec.model.replace("{model}", model)


@dataclass(slots=True, frozen=True)
class CorsSettings:
    """`server.cors`: which browser origins may call the gateway (off when absent)."""

    origins: tuple[str, ...]  # exact origins, or "*" for any
    max_age: int = 600
    allow_credentials: bool = False

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins


@dataclass(slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_size: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    drain_delay: float = 0.0  # seconds new requests are still served after SIGTERM (readiness already 503)
    shutdown_grace: float = 30.0  # seconds requests in flight may take to finish once the listener closed
    # Listener protection (README "Security"): read once at start-up.
    max_connections: int = 4096
    max_header_size: int = 64 * 1024  # all request-line and header bytes of one request
    header_timeout: float = 10.0  # seconds to receive a request's headers
    keepalive_timeout: float = 75.0  # seconds an idle keep-alive connection is kept
    body_timeout: float = 60.0  # seconds to receive a request's body, once its headers are in
    cors: CorsSettings | None = None
    #: Seconds a client may take to accept more of a response before it is dropped.
    write_timeout: float = 60.0


@dataclass(slots=True, frozen=True)
class StateSettings:
    """`state:`: where shared state lives (DESIGN §4 "Shared state")."""

    redis: str | None = None  # None: in process (one process only)
    on_error: str = "allow"  # allow | deny, when Redis cannot be reached


@dataclass(slots=True, frozen=True)
class ResponsesSettings:
    """`responses:`: the gateway's store of Responses API objects (docs/responses.md)."""

    ttl: float = 86400.0  # seconds a stored response lives
    max_bytes: int = 4 * 1024 * 1024  # a larger response is answered but not stored
    ownership_ttl: float = 30 * 86400.0  # seconds the owner of a natively stored id is remembered


@dataclass(slots=True)
class Config:
    path: str
    server: ServerSettings
    clients: tuple[ClientKey, ...] | None  # None: open gateway
    providers: dict[str, Provider]
    routes: tuple[Route, ...]
    state: StateSettings = field(default_factory=StateSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)
    plugins_block: tuple[str, ...] = ()
    plugins_only: tuple[str, ...] | None = None
    keys_by_digest: dict[bytes, ClientKey] = field(default_factory=dict)
    #: `limits`, `retries`, `breaker` per provider name (only providers that set one).
    provider_policies: dict[str, ProviderPolicy] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.clients is None

    @property
    def has_limits(self) -> bool:
        """Whether any `limits:` or `budget:` is set: counters that N processes must share."""
        return (
            any(k.limits or k.budget for k in self.clients or ())
            or any(r.limits for r in self.routes)
            or any(p.limits for p in self.provider_policies.values())
        )


# ---------------------------------------------------------------- YAML with lines


def _line_map(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), lines)


def _locator(filename: str, lines: dict[tuple[Any, ...], int]) -> Locator:
    def locate(path: tuple[Any, ...]) -> str:
        while path and path not in lines:
            path = path[:-1]
        return f"{filename}:{lines.get(path, 1)}"

    return locate


def _interpolate(value: Any, path: tuple[Any, ...], locate: Locator, problems: list[str]) -> Any:
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            env = os.environ.get(name)
            if env is not None:
                return env
            if default is not None:
                return default
            problems.append(
                f"{locate(path)}: {format_path(path)}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), locate, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), locate, problems) for i, v in enumerate(value)]
    return value


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Locator]:
    """Parse and interpolate the file; the locator maps key paths to `file:line`."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{filename}: cannot read: {exc.strerror or exc}") from exc
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_map(node, (), lines)
    locate = _locator(filename, lines)
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: <top>: expected a mapping with server/clients/providers/routes")
    problems: list[str] = []
    data = _interpolate(data, (), locate, problems)
    if problems:
        raise ConfigError(problems)
    return data, locate


# ---------------------------------------------------------------- sections


def parse_size(opts: Options, key: str, default: int) -> int:
    raw = opts.raw(key)
    if raw is None:
        return default
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    m = _SIZE.match(str(raw))
    if not m:
        raise opts.error(key, f"expected a size like 16MiB or 1048576, got {raw!r}")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(opts: Options, key: str, default: float) -> float:
    """Seconds, from a number or a string like `90s`, `30m`, `24h`, `7d`."""
    raw = opts.raw(key)
    if raw is None:
        return default
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        return float(raw)
    m = _DURATION.match(str(raw)) if not isinstance(raw, bool) else None
    if not m or float(m.group(1)) <= 0:
        raise opts.error(key, f"expected a positive duration like 3600, 90s, 30m, 24h or 7d, got {raw!r}")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]


def _responses(opts: Options) -> ResponsesSettings:
    d = ResponsesSettings()
    settings = ResponsesSettings(
        ttl=parse_duration(opts, "ttl", d.ttl),
        max_bytes=parse_size(opts, "max_bytes", d.max_bytes),
        ownership_ttl=parse_duration(opts, "ownership_ttl", d.ownership_ttl),
    )
    opts.check_unused()
    return settings


def _server(opts: Options) -> ServerSettings:
    s = ServerSettings()
    s.host = opts.str("host", s.host)
    s.port = opts.int("port", s.port)
    s.max_body_size = parse_size(opts, "max_body_size", s.max_body_size)
    s.log_level = opts.str("log_level", s.log_level, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    s.drain_delay = float(opts.number("drain_delay", s.drain_delay))
    s.shutdown_grace = float(opts.number("shutdown_grace", s.shutdown_grace))
    s.max_connections = opts.int("max_connections", s.max_connections, minimum=1)
    s.max_header_size = parse_size(opts, "max_header_size", s.max_header_size)
    if s.max_header_size < 1024:
        raise opts.error("max_header_size", f"expected at least 1KiB, got {s.max_header_size} bytes")
    s.header_timeout = opts.number("header_timeout", s.header_timeout, minimum=0.01)
    s.keepalive_timeout = opts.number("keepalive_timeout", s.keepalive_timeout, minimum=0.01)
    s.body_timeout = opts.number("body_timeout", s.body_timeout, minimum=0.01)
    if "cors" in opts:
        s.cors = _cors(opts.block("cors"))
    s.write_timeout = opts.number("write_timeout", s.write_timeout, minimum=0.001)
    opts.check_unused()
    return s


def _cors(opts: Options) -> CorsSettings:
    origins = opts.str_list("origins")
    if not origins:
        raise opts.error("origins", 'expected at least one origin (https://app.example.com), or "*"')
    for origin in origins:
        parts = urlsplit(origin.rstrip("/"))
        bad = parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query
        if origin != "*" and bad:
            raise opts.error("origins", f'expected origins like https://app.example.com or "*", got {origin!r}')
    credentials = opts.bool("allow_credentials", False)
    if credentials and "*" in origins:
        raise opts.error("allow_credentials", 'not with origins "*": name the origins that may send credentials')
    cors = CorsSettings(tuple(o.rstrip("/") for o in origins), opts.int("max_age", 600), credentials)
    opts.check_unused()
    return cors


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _state(opts: Options) -> StateSettings:
    url = opts.str("redis", None)
    if url is not None:
        scheme = url.partition("://")[0].lower()
        if scheme not in _REDIS_SCHEMES or "://" not in url:
            raise opts.error("redis", "expected a Redis URL: redis://HOST:PORT/DB, rediss://… (TLS) or unix:///path")
    on_error = opts.str("on_error", "allow").lower()
    if on_error not in ("allow", "deny"):
        raise opts.error("on_error", f"expected allow or deny, got {opts.raw('on_error')!r}")
    opts.check_unused()
    return StateSettings(url, on_error)


def _clients(opts: Options, problems: list[str]) -> tuple[ClientKey, ...]:
    entries = opts.raw("keys")
    opts.check_unused()
    if not isinstance(entries, list) or not entries:
        raise opts.error("keys", "expected a non-empty list of {name, key | key_sha256, models}")
    keys: list[ClientKey] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        item = Options(entry if isinstance(entry, dict) else None, (*opts.path, "keys", i), opts._locate)
        try:
            if not isinstance(entry, dict):
                raise item.error(None, "expected a mapping with name and key or key_sha256")
            name = item.str("name")
            if name in seen:
                raise item.error("name", f"duplicate client name {name!r}")
            seen.add(name)
            key = item.secret("key")
            hexdigest = item.str("key_sha256", None)
            if (key is None) == (hexdigest is None):
                raise item.error(None, "expected exactly one of key or key_sha256")
            if key is not None:
                if not key:
                    raise item.error("key", "the key is empty")
                digest = hashlib.sha256(key.encode()).digest()
            else:
                if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
                    raise item.error("key_sha256", "expected 64 hex digits (sha256 of the key)")
                digest = bytes.fromhex(hexdigest)
            models = item.str_list("models", None)
            limits, budget = read_limits(item), read_budget(item)
            item.check_unused()
            keys.append(ClientKey(name, digest, tuple(models) if models is not None else None, limits, budget))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return tuple(keys)


def _guardrail_version(opts: Options) -> str:
    """A number or DRAFT (AWS's spelling, whatever case the YAML uses; default DRAFT)."""
    raw = opts.raw("version")
    version = str(raw).strip() if raw is not None else "DRAFT"
    if version.upper() == "DRAFT":
        return "DRAFT"
    if not re.fullmatch(r"[1-9][0-9]{0,7}", version):
        raise opts.error("version", f"expected a version number or DRAFT, got {raw!r}")
    return version


def _guardrail(opts: Options) -> Guardrail:
    g = Guardrail(
        id=opts.str("id"),
        version=_guardrail_version(opts),
        trace=opts.str("trace", None, choices=("enabled", "disabled", "enabled_full")),
        tag_suffix=opts.str("tag_suffix", None),
        stream_processing_mode=opts.str("stream_processing_mode", None, choices=("sync", "async")),
    )
    opts.check_unused()
    return g


def _targets(raw: Any, opts: Options, providers: Mapping[str, Provider]) -> tuple[TargetSpec, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise opts.error("to", "expected a provider name, a {provider, model} mapping, or a list of them")
    specs = []
    for i, item in enumerate(items):
        path = ("to", i) if isinstance(raw, list) else ("to",)
        if isinstance(item, str):
            item = {"provider": item}
        t = Options(item if isinstance(item, dict) else None, opts.path + path, opts._locate)
        if not isinstance(item, dict):
            raise t.error(None, "expected a provider name or a {provider, model} mapping")
        name = t.str("provider")
        provider = providers.get(name)
        if provider is None:
            known = ", ".join(sorted(providers)) or "none"
            raise t.error("provider", f"unknown provider {name!r} (defined: {known})")
        model = t.str("model", None)
        weight = read_weight(t)
        extras = provider.target_options(t)
        t.check_unused()
        specs.append(TargetSpec(name, model, extras, weight))
    return tuple(specs)


def _routes(raw: Any, root: Options, providers: Mapping[str, Provider], problems: list[str]) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise root.error("routes", "expected a list of {model, to} rules")
    routes = []
    for i, entry in enumerate(raw):
        opts = Options(entry if isinstance(entry, dict) else None, ("routes", i), root._locate)
        try:
            if not isinstance(entry, dict):
                raise opts.error(None, "expected a mapping with model and to")
            pattern = opts.str("model")
            if "to" not in entry:
                raise opts.error("to", "required; expected a provider name or a list of targets")
            targets = _targets(opts.raw("to"), opts, providers)
            guardrail = _guardrail(opts.block("guardrail")) if "guardrail" in entry else None
            if guardrail is not None:
                for spec in targets:
                    if not providers[spec.provider].supports_guardrails:
                        raise opts.error(
                            "guardrail",
                            f"provider {spec.provider!r} (type {providers[spec.provider].type}) "
                            "cannot apply guardrails",
                        )
            limits, price, strategy = read_limits(opts), read_price(opts), read_strategy(opts)
            default_max_tokens = opts.int("default_max_tokens", None, minimum=1)
            opts.check_unused()
            line = int(root._locate(("routes", i)).rsplit(":", 1)[1])
            routes.append(Route(pattern, targets, guardrail, line, limits, price, default_max_tokens, strategy))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return tuple(routes)


def _providers(
    raw: Any,
    root: Options,
    types: Mapping[str, ProviderRef],
    problems: list[str],
    policies: dict[str, ProviderPolicy],
) -> dict[str, Provider]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise root.error("providers", "expected a mapping of name => {type, ...}")
    providers: dict[str, Provider] = {}
    for name, block in raw.items():
        opts = Options(block if isinstance(block, dict) else None, ("providers", name), root._locate)
        try:
            if not isinstance(block, dict):
                raise opts.error(None, "expected a mapping with a type")
            kind = opts.str("type")
            policy = read_provider_policy(opts)  # core keys, before the class reads its own
            if policy != ProviderPolicy():
                policies[str(name)] = policy
            ref = types.get(kind)
            if ref is None:
                known = ", ".join(sorted(types)) or "none"
                raise opts.error("type", f"unknown provider type {kind!r} (registered: {known})")
            try:
                cls = resolve_provider(kind, ref)
            except ConfigError as exc:
                raise opts.error("type", exc.problems[0]) from exc
            provider = cls(str(name), opts)
            passes = provider.supports_passthrough or RESPONSES in provider.endpoints
            if provider.responses == "native" and not passes:
                raise opts.error("responses", f"type {kind} cannot pass /v1/responses through; expected translate")
            opts.check_unused()
            providers[str(name)] = provider
        except ConfigError as exc:
            problems.extend(exc.problems)
    return providers


_TOP_KEYS = ("server", "clients", "providers", "routes", "state", "telemetry", "responses", "plugins")


@dataclass(slots=True, frozen=True)
class Document:
    """One read of the config file: its data and where each key sits."""

    path: str
    data: dict[str, Any]
    locate: Locator

    @classmethod
    def read(cls, path: str | Path) -> Document:
        data, locate = read_yaml(path)
        return cls(str(path), data, locate)


def plugin_selection(doc: Document) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The `plugins: {block, only}` lists, read before plugins load (they pick which load)."""
    opts = Options(doc.data, (), doc.locate).block("plugins")
    block = opts.str_list("block", [])
    only = opts.str_list("only", None)
    opts.check_unused()
    return tuple(block), tuple(only) if only is not None else None


def load_config(source: str | Path | Document, provider_types: Mapping[str, ProviderRef]) -> Config:
    """Validate every section of one read of the file (a path is read here)."""
    doc = source if isinstance(source, Document) else Document.read(source)
    data, path = doc.data, doc.path
    root = Options(data, (), doc.locate)
    problems: list[str] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(
                root.error(key, f"unknown top-level key (expected one of {', '.join(_TOP_KEYS)})").problems[0]
            )

    def section(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    server = section(_server, root.block("server")) or ServerSettings()
    state = section(_state, root.block("state")) or StateSettings()
    telemetry = section(parse_telemetry, root.block("telemetry")) or TelemetrySettings()
    responses = section(_responses, root.block("responses")) or ResponsesSettings()
    clients = section(_clients, root.block("clients"), problems) if data.get("clients") is not None else None
    policies: dict[str, ProviderPolicy] = {}
    providers = section(_providers, data.get("providers"), root, provider_types, problems, policies) or {}
    routes = section(_routes, data.get("routes"), root, providers, problems) or ()
    selection = section(plugin_selection, doc) or ((), None)
    if problems:
        raise ConfigError(problems)
    config = Config(
        path=path,
        server=server,
        clients=clients,
        providers=providers,
        routes=routes,
        state=state,
        telemetry=telemetry,
        responses=responses,
        plugins_block=selection[0],
        plugins_only=selection[1],
        provider_policies=policies,
    )
    if clients is not None:
        config.keys_by_digest = {k.digest: k for k in clients}
    return config
