"""Where the deploy/ files are, and loaders for them, shared by the deploy tests."""

import json
import pathlib

import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIGS = [DEPLOY / "prometheus" / "prometheus.yml",
                      DEPLOY / "prometheus" / "prometheus-k8s.yml"]
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
AGENT_UNIT = DEPLOY / "systemd" / "edgefleet-agent.service"
PROMTOOL_TESTS = REPO_ROOT / "tests" / "deploy" / "promtool" / "alerts_test.yml"


def yaml_files() -> list[pathlib.Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def json_files() -> list[pathlib.Path]:
    return sorted(DEPLOY.rglob("*.json"))


def load_yaml_docs(path: pathlib.Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_yaml(path: pathlib.Path):
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def load_json(path: pathlib.Path):
    return json.loads(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every Prometheus query in a dashboard: panel targets and variables."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']!r}", query))
    return out


def k8s_objects() -> list[dict]:
    objs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objs += [dict(doc, _file=path.name) for doc in load_yaml_docs(path)]
    return objs
