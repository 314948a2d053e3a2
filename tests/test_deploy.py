"""The deployment files agree with the code: Dockerfile, Kubernetes manifests, compose, Helm, Grafana.

Nothing here builds an image or talks to a cluster (neither a base-image registry nor a
Kubernetes API is reachable): the manifests are validated offline against the
Kubernetes schemas (kubernetes-validate), the Prometheus files with promtool, the
dashboard's queries by a real Prometheus, and every path, port, config file and grace
period is checked against what the gateway actually serves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from core_helpers import raw

import proxy
from proxy.cli import build_parser
from proxy.server.runtime import load_runtime
from proxy.testing import Gateway, PrometheusServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CONFIG_PATH = "/etc/relaygate/config.yaml"
K8S_VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent version in kubernetes-validate's schemas
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in _documents(K8S / name):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    assert {p.name for p in K8S.glob("*.yaml")} == {*kustomization["resources"], "kustomization.yaml"}
    return out


def _env_for(text: str, provided: dict[str, str]) -> dict[str, str]:
    """The variables a config needs, from `provided`; a required one missing fails the test."""
    env = {}
    for name, default in _VAR.findall(text):
        if name in provided:
            env[name] = provided[name]
        else:
            assert default, f"${{{name}}} is required by the config but not provided"
    return env


def _check(text: str, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_runtime(path).config


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    lines = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text()).splitlines()
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
            for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    froms = [arg for op, arg in _dockerfile() if op == "FROM"]
    assert len(froms) >= 2 and all("-slim" in f for f in froms)
    final = dict(_final_stage())
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert "useradd" in final["RUN"] and f"--uid {user}" in final["RUN"]


def test_dockerfile_command_is_the_clis_serve_with_the_documented_config() -> None:
    final = dict(_final_stage())
    argv = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    assert argv == ["relaygate", "serve", "--config", CONFIG_PATH]
    scripts = (ROOT / "setup.cfg").read_text().split("console_scripts =", 1)[1].split("\n")[1]
    assert scripts.split("=")[0].strip() == argv[0] and scripts.split("=")[1].strip() == "proxy.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.config == CONFIG_PATH
    copies = [arg.split() for op, arg in _final_stage() if op == "COPY"]
    assert ["deploy/config.yaml", CONFIG_PATH] in copies


def test_dockerfile_installs_the_core_and_every_bundled_plugin() -> None:
    installs = " ".join(arg for op, arg in _dockerfile() if op == "RUN" and "pip install" in arg)
    assert '".[otel]"' in installs
    for plugin in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        assert f"./plugins/{plugin.parent.name}" in installs, plugin.parent.name
    copied = [arg.split()[0] for op, arg in _dockerfile() if op == "COPY" and "--from" not in arg]
    for needed in ("proxy", "plugins", "setup.cfg"):
        assert any(needed in c for c in copied), needed
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "proxy" not in ignored and "plugins" not in ignored and "deploy" not in ignored


def test_the_images_config_serves_on_the_exposed_port_with_the_healthcheck_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = dict(_final_stage())
    text = (DEPLOY / "config.yaml").read_text()
    config = _check(text, tmp_path, {"RELAYGATE_CLIENT_KEY": "sk-image-test"}, monkeypatch)
    assert config.server.host == "0.0.0.0" and not config.open  # reachable, and keyed
    assert final["EXPOSE"].split()[0] == str(config.server.port)
    healthcheck = final["HEALTHCHECK"]
    assert f"http://127.0.0.1:{config.server.port}/healthz" in healthcheck
    assert "STOPSIGNAL" in final and final["STOPSIGNAL"] == "SIGTERM"


def test_the_healthcheck_command_passes_against_a_gateway() -> None:
    """The HEALTHCHECK's own command, pointed at a running gateway's port, exits 0."""
    final = dict(_final_stage())
    exec_form = json.loads(final["HEALTHCHECK"].split("CMD", 1)[1])
    with Gateway("providers:\n  demo: {type: demo}\nroutes:\n  - {model: '*', to: demo}\n") as gw:
        command = [c.replace("127.0.0.1:8080", f"127.0.0.1:{gw.port}") for c in exec_form]
        assert command[0] == "python"
        assert subprocess.run([sys.executable, *command[1:]], timeout=30, check=False).returncode == 0


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    manifests: dict[tuple[str, str], dict[str, Any]], version: str
) -> None:
    assert {kind for kind, _ in manifests} >= {
        "Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
    }  # fmt: skip
    for doc in manifests.values():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = json.loads(json.dumps(manifests[("Deployment", "relaygate")]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo is caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def _container(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = manifests[("Deployment", "relaygate")]["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    container: dict[str, Any] = pod["containers"][0]
    return container


def _configmap_text(manifests: dict[tuple[str, str], dict[str, Any]]) -> str:
    text: str = manifests[("ConfigMap", "relaygate-config")]["data"]["config.yaml"]
    return text


@pytest.fixture
def k8s_config(manifests: dict[tuple[str, str], dict[str, Any]], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Any:
    text = _configmap_text(manifests)
    secret = manifests[("Secret", "relaygate-keys")]["stringData"]
    return _check(text, tmp_path, _env_for(text, secret), monkeypatch)


def test_deployment_runs_the_configmap_as_the_cli_expects(
    manifests: dict[tuple[str, str], dict[str, Any]], k8s_config: Any
) -> None:
    container = _container(manifests)
    final = dict(_final_stage())
    argv = json.loads(final["ENTRYPOINT"]) + container["args"]
    assert argv == ["relaygate", "serve", "--config", CONFIG_PATH]
    pod = manifests[("Deployment", "relaygate")]["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "relaygate-config"
    assert volume["configMap"]["items"] == [{"key": "config.yaml", "path": Path(CONFIG_PATH).name}]
    assert container["envFrom"] == [{"secretRef": {"name": "relaygate-keys"}}]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])  # read-only root, --workers files
    assert k8s_config.server.host == "0.0.0.0" and not k8s_config.open


def test_probes_and_ports_are_what_the_gateway_serves(
    manifests: dict[tuple[str, str], dict[str, Any]], k8s_config: Any, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    container = _container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": k8s_config.server.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = manifests[("Service", "relaygate")]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    annotations = manifests[("Deployment", "relaygate")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(k8s_config.server.port)
    # Serve the ConfigMap's own config (its Redis swapped for the test's) and hit the probe paths.
    text = _configmap_text(manifests).replace("redis://relaygate-redis:6379/0", redis_server.url)
    secret = manifests[("Secret", "relaygate-keys")]["stringData"]
    with Gateway(text.replace("0.0.0.0", "127.0.0.1"), env=_env_for(text, secret)) as gw:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert raw("GET", gw.url + container[probe]["httpGet"]["path"], key=None).status == 200, probe
        assert raw("GET", gw.url + annotations["prometheus.io/path"], key=None).status == 200


def test_grace_period_covers_prestop_drain_delay_and_shutdown_grace(
    manifests: dict[tuple[str, str], dict[str, Any]], k8s_config: Any
) -> None:
    pod = manifests[("Deployment", "relaygate")]["spec"]["template"]["spec"]
    pre_stop = _container(manifests)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + k8s_config.server.drain_delay + k8s_config.server.shutdown_grace
    assert pod["terminationGracePeriodSeconds"] > needed
    assert k8s_config.server.shutdown_grace > 0


def test_selectors_and_targets_agree(manifests: dict[tuple[str, str], dict[str, Any]], k8s_config: Any) -> None:
    deployment = manifests[("Deployment", "relaygate")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert manifests[("Service", "relaygate")]["spec"]["selector"].items() <= pod_labels.items()
    assert manifests[("PodDisruptionBudget", "relaygate")]["spec"]["selector"]["matchLabels"].items() \
        <= pod_labels.items()
    hpa = manifests[("HorizontalPodAutoscaler", "relaygate")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "relaygate"}
    assert hpa["minReplicas"] >= 2
    container = _container(manifests)
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    # The Redis the config points at is the one the manifests define.
    redis_service = manifests[("Service", "relaygate-redis")]["spec"]
    assert k8s_config.state.redis == f"redis://relaygate-redis:{redis_service['ports'][0]['port']}/0"


# ---------------------------------------------------------------- compose and Prometheus


def test_compose_runs_two_replicas_redis_and_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    gateways = [name for name, s in services.items() if s.get("image") == "relaygate:local"]
    assert len(gateways) == 2 and "redis" in services and "prometheus" in services
    for name in gateways:
        service = services[name]
        assert service["command"] == ["serve", "--config", CONFIG_PATH]
        source, target = service["volumes"][0].split(":")[:2]
        assert target == CONFIG_PATH
        text = (DEPLOY / source).read_text()
        config = _check(text, tmp_path, {"RELAYGATE_CLIENT_KEY": "k"}, monkeypatch)
        assert config.state.redis == "redis://redis:6379/0"
        assert float(service["stop_grace_period"].rstrip("s")) > config.server.shutdown_grace
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:8080" for name in gateways)


def test_prometheus_files_pass_promtool() -> None:
    rules = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert config.returncode == 0, config.stdout + config.stderr


# ---------------------------------------------------------------- Grafana


GENAI_LABELS = {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name", "gen_ai_token_type"}


def _metric_families() -> set[str]:
    from proxy.telemetry.metrics import Metrics

    metrics = Metrics(lambda: 0)
    return {m.name for m in metrics.families}


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "relaygate.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["name"], variable["query"]["query"]


def test_dashboard_queries_use_only_our_metrics() -> None:
    families = _metric_families()
    queries = list(_dashboard_queries())
    assert len(queries) >= 15
    used: set[str] = set()
    for title, expr in queries:
        for name in set(re.findall(r"\b((?:relaygate|gen_ai)_[a-z_]+)\b", expr)) - GENAI_LABELS:
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert base in families or name in families, (title, name)
            used.add(base)
    assert used >= {re.sub(r"_total$", "", f) for f in families}, "a metric no panel shows"


def _grafana_to_promql(expr: str) -> str:
    for variable in ("route", "provider", "client", "model"):
        expr = expr.replace(f"${variable}", ".*")
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h")


def test_dashboard_queries_are_valid_promql() -> None:
    """A real Prometheus parses and evaluates every panel's query (variables filled in)."""
    with PrometheusServer([]) as prometheus:
        for _title, expr in _dashboard_queries():
            if expr.startswith("label_values("):
                metric = expr[len("label_values("):].split(",")[0]
                prometheus.query(metric)
                continue
            prometheus.query(_grafana_to_promql(expr))  # raises on a parse error


# ---------------------------------------------------------------- Helm


def _helm_value_paths(values: Any, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(values, dict):
        for key, value in values.items():
            path = f"{prefix}.{key}"
            out.add(path)
            out |= _helm_value_paths(value, path)
    return out


def test_helm_chart_agrees_with_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chart_dir = DEPLOY / "helm" / "relaygate"
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "relaygate"
    assert chart["appVersion"] == proxy.__version__
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    text = yaml.safe_dump(values["config"])
    config = _check(text, tmp_path, _env_for(text, values["secretEnv"]), monkeypatch)
    assert config.server.host == "0.0.0.0"
    needed = values["preStopSleepSeconds"] + config.server.drain_delay + config.server.shutdown_grace
    assert values["terminationGracePeriodSeconds"] > needed
    known = _helm_value_paths(values)
    templates = {p.name: p.read_text() for p in (chart_dir / "templates").iterdir()}
    for name, template in templates.items():
        for path in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template):
            assert path in known, f"{name}: .Values{path} is not in values.yaml"
    deployment = templates["deployment.yaml"]
    assert 'args: ["serve", "--config", "/etc/relaygate/config.yaml"]' in deployment
    assert "path: /readyz" in deployment and "path: /healthz" in deployment
    assert "containerPort: {{ .Values.config.server.port }}" in deployment
    assert "mountPath: /etc/relaygate" in deployment
    for kind in ("Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert any(f"kind: {kind}" in t for t in templates.values()), kind


def test_operations_doc_says_what_is_tested_instead_of_building_the_image() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    assert "cannot be built here" in text
    for path in ("deploy/kubernetes/", "deploy/compose.yaml", "deploy/helm/relaygate/",
                 "deploy/grafana/relaygate.json"):
        assert path in text
    for family in _metric_families():  # the metrics reference names every family
        assert f"`{family}`" in text or f"`{family}_total`" in text, family
    from proxy.errors import ERROR_TYPES

    for value in ERROR_TYPES:
        assert f"`{value}`" in text, value
