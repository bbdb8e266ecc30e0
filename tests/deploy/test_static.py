"""Static checks of deploy/: every file parses, the pieces agree with each other, the
dashboard and alert rules use only the server's metric contract, and promtool,
docker-compose and systemd-analyze accept what they can check without a daemon."""

import json
import re
import shutil
import subprocess

import pytest

from tests.deploy import files, promql
from tests.deploy.metrics_contract import METRICS, TARGET_LABELS

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus` ships it)")

DATASOURCE_UID = "edgefleet-prometheus"
DASHBOARD_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# -- everything parses ------------------------------------------------------------------

@pytest.mark.parametrize("path", files.yaml_files(), ids=lambda p: str(p.relative_to(files.DEPLOY)))
def test_yaml_parses(path):
    assert files.load_yaml_docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", files.json_files(), ids=lambda p: str(p.relative_to(files.DEPLOY)))
def test_json_parses(path):
    assert isinstance(files.load_json(path), dict)


def test_the_expected_files_exist():
    for rel in ["Dockerfile", "docker-compose.yml", "healthcheck.py", "prometheus/prometheus.yml",
                "prometheus/alerts.yml", "grafana/provisioning/datasources/prometheus.yml",
                "grafana/provisioning/dashboards/edgefleet.yml", "grafana/dashboards/fleet.json",
                "systemd/edgefleet-agent.service", "k8s/server-deployment.yaml"]:
        assert (files.DEPLOY / rel).is_file(), rel


# -- metric contract ---------------------------------------------------------------------

def check_against_contract(where: str, expr: str, extra_metrics: set[str] = frozenset()) -> set[str]:
    """Assert expr uses only contract metrics and their labels; return the metrics it uses."""
    names = promql.metric_names(expr)
    unknown = names - set(METRICS)
    assert not unknown, f"{where}: metric(s) not exported by the server: {sorted(unknown)} in {expr!r}"
    for metric, label in promql.selector_labels(expr):
        assert label in METRICS[metric] + TARGET_LABELS, \
            f"{where}: {metric} has no label {label!r} (has {METRICS[metric]})"
    known_labels = set(TARGET_LABELS).union(*(METRICS[n] for n in names)) if names else set(TARGET_LABELS)
    stray = promql.grouping_labels(expr) - known_labels
    assert not stray, f"{where}: grouping by label(s) no metric in the expression has: {sorted(stray)}"
    assert names or extra_metrics & set(re.findall(r"\b\w+\b", expr)), \
        f"{where}: references no edgefleet metric: {expr!r}"
    return names


def test_alert_rules_use_only_contract_metrics_and_labels():
    used = set()
    for rule in files.alert_rules():
        used |= check_against_contract(f"alert {rule['alert']}", rule["expr"], extra_metrics={"up"})
        for label in ("severity",):
            assert label in rule.get("labels", {}), f"alert {rule['alert']} has no {label} label"
        assert rule.get("annotations", {}).get("summary"), f"alert {rule['alert']} has no summary"
    # The rules the operators asked for are there, on the metric each needs.
    for metric in ["edgefleet_device_up", "edgefleet_deployments", "edgefleet_device_battery_ratio",
                   "edgefleet_device_temperature_celsius", "edgefleet_device_inference_errors_total",
                   "edgefleet_device_inference_latency_seconds"]:
        assert metric in used, f"no alert rule watches {metric}"


@pytest.mark.parametrize("path", files.DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_only_contract_metrics_and_labels(path):
    dashboard = files.load_json(path)
    queries = files.dashboard_queries(dashboard)
    assert queries, f"{path.name} has no queries"
    used = set()
    for where, expr in queries:
        used |= check_against_contract(f"{path.name} {where}", expr)
    if path.name == "fleet.json":
        required = {"edgefleet_devices", "edgefleet_device_battery_ratio",
                    "edgefleet_device_temperature_celsius", "edgefleet_device_cpu_load_ratio",
                    "edgefleet_device_active_variant_info", "edgefleet_device_inferences_total",
                    "edgefleet_device_inference_latency_seconds",
                    "edgefleet_device_variant_switches_total", "edgefleet_deployments"}
        assert required <= used, f"fleet dashboard lacks panels for {sorted(required - used)}"


def test_contract_checker_catches_a_renamed_metric_and_label():
    with pytest.raises(AssertionError, match="not exported"):
        check_against_contract("probe", "edgefleet_device_battery_percent < 15")
    with pytest.raises(AssertionError, match="no label"):
        check_against_contract("probe", 'edgefleet_device_up{device="x"}')
    with pytest.raises(AssertionError, match="grouping"):
        check_against_contract("probe", "max by (device) (edgefleet_device_up)")


# -- Grafana -----------------------------------------------------------------------------

def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


@pytest.mark.parametrize("path", files.DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dashboard = files.load_json(path)
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == DATASOURCE_UID

    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']}: off the grid"
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        # One data source everywhere: the variable, so the dashboard imports anywhere.
        assert panel["datasource"] == DASHBOARD_DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DASHBOARD_DATASOURCE, panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DASHBOARD_DATASOURCE


def test_grafana_provisioning_matches_compose_and_dashboards():
    datasource = files.load_yaml(files.DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == DATASOURCE_UID
    compose = files.load_yaml(files.COMPOSE)["services"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose

    provider = files.load_yaml(files.DEPLOY / "grafana/provisioning/dashboards/edgefleet.yml")
    (prov,) = provider["providers"]
    mounts = dict(reversed(v.split(":")[:2]) for v in compose["grafana"]["volumes"])
    assert mounts[prov["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    env = compose["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(prov["options"]["path"] + "/")
    assert (files.DEPLOY / "grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()


# -- Prometheus: promtool ----------------------------------------------------------------

def promtool(*args, cwd=None):
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", str(files.ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(files.alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_alert_rule_unit_tests():
    """Synthetic series in, expected alerts out (tests/deploy/promtool/alerts_test.yml)."""
    result = promtool("test", "rules", str(files.PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname:\s*(\w+)", files.PROMTOOL_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in files.alert_rules()}, "every alert needs a unit test"


@needs_promtool
@pytest.mark.parametrize("path", files.PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(path, tmp_path):
    # As shipped (the rule glob points into the container), then with the glob pointed at
    # the repo's rules so that config and rules are checked together.
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = files.load_yaml(path)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(files.ALERTS)]
    local = tmp_path / path.name
    local.write_text(json.dumps(config))     # JSON is YAML
    result = promtool("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("path", files.DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_are_valid_promql(path, tmp_path):
    """promtool parses each dashboard query as a recording rule (Grafana variables filled in)."""
    queries = files.dashboard_queries(files.load_json(path))
    rules = [{"record": f"dashboard:query_{i}", "expr": promql.expand_grafana(expr)}
             for i, (_, expr) in enumerate(queries) if not expr.startswith("label_values(")]
    assert rules
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose and the image ----------------------------------------------------------

def test_compose_services_agree_with_each_other():
    compose = files.load_yaml(files.COMPOSE)
    services = compose["services"]
    assert {"server", "prometheus", "grafana"} <= set(services)

    server = services["server"]
    build = server["build"]
    context = (files.COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    assert (context / "constraints.txt").is_file() and (context / "pyproject.toml").is_file()
    assert {"50051:50051", "9464:9464"} <= set(server["ports"])
    assert "healthcheck.py" in " ".join(server["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in server["volumes"])
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (files.COMPOSE.parent / source).exists(), f"{name}: {source} missing"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} not declared"

    # Prometheus scrapes the compose server service on its metrics port, with the rules mounted
    # where prometheus.yml's rule_files glob looks.
    prom_mounts = dict(reversed(v.split(":")[:2]) for v in services["prometheus"]["volumes"])
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert prom_mounts["/etc/prometheus/rules/alerts.yml"] == "./prometheus/alerts.yml"
    prom = files.load_yaml(files.DEPLOY / "prometheus/prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "edgefleet-server"]
    assert job["static_configs"][0]["targets"] == ["server:9464"]


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (Debian package `docker-compose`)")
def test_docker_compose_accepts_the_file():
    result = subprocess.run(["docker-compose", "-f", str(files.COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=files.DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_server_extra_with_constraints():
    text = (files.DEPLOY / "Dockerfile").read_text()
    assert re.search(r'pip install .*-c constraints\.txt.*"\.\[server\]"', text)
    assert "EXPOSE 50051 9464" in text and "HEALTHCHECK" in text
    assert "COPY deploy/healthcheck.py" in text and "USER edgefleet" in text
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:5] == ["server", "--data-dir", "/data", "--host", "0.0.0.0"]


# -- systemd -------------------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit -> {section: [(key, value), ...]}; keys may repeat, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def test_agent_unit_runs_the_agent_hardened():
    unit = parse_unit(files.AGENT_UNIT.read_text())
    service = dict(unit["Service"])
    assert service["Restart"] == "on-failure"
    exec_start = service["ExecStart"]
    assert re.search(r"/edgefleet agent --server \S+ --data-dir /var/lib/edgefleet-agent$", exec_start)
    # The one-time token reaches the agent through its environment, never its command line.
    assert "--token" not in exec_start
    assert service["StateDirectory"] == "edgefleet-agent"      # = the --data-dir above
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    # Every variable ExecStart uses comes from the EnvironmentFile, as the example shows.
    env_file = service["EnvironmentFile"].lstrip("-")
    assert env_file.startswith("/etc/")
    example = (files.AGENT_UNIT.parent / "agent.env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z_]+)\}", exec_start))
    assert used == {"EDGEFLEET_SERVER"} and used <= defined
    assert "EDGEFLEET_ENROLL_TOKEN" in defined      # read by the agent from its environment
    assert unit["Install"] == [("WantedBy", "multi-user.target")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_agent_unit(tmp_path):
    # verify insists the ExecStart binary exists: point it at a stand-in in tmp_path.
    fake = tmp_path / "bin" / "edgefleet"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    unit = tmp_path / files.AGENT_UNIT.name
    unit.write_text(files.AGENT_UNIT.read_text().replace("/opt/edgefleet/bin/edgefleet", str(fake)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stderr.strip(), result.stderr      # no "Unknown key" warnings either

    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline security scoring")
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert exposure <= 2.5, f"hardening regressed: exposure {exposure}\n{result.stdout}"


CREDENTIALS_DIRECTORY = f"/run/credentials/{files.AGENT_UNIT.name}"


def tls_wiring() -> tuple[dict[str, str], dict[str, str]]:
    """The commented-out TLS lines: unit LoadCredential id -> source file, and agent.env.example
    variable -> path."""
    unit = files.AGENT_UNIT.read_text()
    credentials = dict(re.findall(r"^#LoadCredential=([\w.-]+):(\S+)$", unit, re.M))
    example = (files.AGENT_UNIT.parent / "agent.env.example").read_text()
    variables = dict(re.findall(r"^#(EDGEFLEET_TLS_[A-Z_]+)=(\S+)$", example, re.M))
    return credentials, variables


def test_agent_tls_variables_point_at_the_units_credentials():
    from agent.main import TLS_ENVIRONMENT

    credentials, variables = tls_wiring()
    # The example sets exactly the variables the agent reads for --tls-ca/--tls-cert/--tls-key ...
    assert set(variables) == set(TLS_ENVIRONMENT.values())
    # ... each to a credential the unit loads, in the directory systemd gives that unit.
    for name, path in variables.items():
        directory, _, credential = path.rpartition("/")
        assert directory == CREDENTIALS_DIRECTORY, name
        assert credential in credentials, f"{name}: no LoadCredential={credential}:..."
    assert set(credentials) == {p.rpartition("/")[2] for p in variables.values()}
    # The sources are root's, under /etc (the dynamic user could not read them there).
    assert all(source.startswith("/etc/edgefleet/") for source in credentials.values())
    # TLS stays off until someone uncomments it: no live LoadCredential=, no live TLS variable.
    assert "LoadCredential" not in dict(parse_unit(files.AGENT_UNIT.read_text())["Service"])
    example = (files.AGENT_UNIT.parent / "agent.env.example").read_text()
    assert not re.search(r"^EDGEFLEET_TLS_", example, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_agent_unit_with_tls_credentials(tmp_path):
    fake = tmp_path / "bin" / "edgefleet"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    text = files.AGENT_UNIT.read_text().replace("/opt/edgefleet/bin/edgefleet", str(fake))
    credentials, _ = tls_wiring()
    for credential, source in credentials.items():
        local = tmp_path / "tls" / credential
        local.parent.mkdir(exist_ok=True)
        local.write_text("stand-in\n")
        text = text.replace(f"#LoadCredential={credential}:{source}", f"LoadCredential={credential}:{local}")
    unit = tmp_path / files.AGENT_UNIT.name
    unit.write_text(text)
    assert len([k for k, _ in parse_unit(text)["Service"] if k == "LoadCredential"]) == len(credentials) == 3
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stderr.strip(), result.stderr


# -- Kubernetes ------------------------------------------------------------------------------

def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_k8s_objects_are_well_formed():
    objs = files.k8s_objects()
    assert objs
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj["_file"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "edgefleet", f"{obj['_file']}: namespace"


def test_k8s_server_deployment_wiring():
    objs = files.k8s_objects()
    (deployment,) = by_kind(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}

    # --db-url comes from a Secret that the example defines, key and all.
    assert "--db-url=$(EDGEFLEET_DB_URL)" in container["args"]
    (env,) = [e for e in container["env"] if e["name"] == "EDGEFLEET_DB_URL"]
    ref = env["valueFrom"]["secretKeyRef"]
    (secret,) = [s for s in by_kind(objs, "Secret") if s["metadata"]["name"] == ref["name"]]
    assert ref["key"] in secret["stringData"]
    assert secret["stringData"][ref["key"]].startswith("postgresql+psycopg://")

    # Built-in gRPC probes (grpc.health.v1) on the gRPC port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    pvcs = {p["metadata"]["name"] for p in by_kind(objs, "PersistentVolumeClaim")}
    assert claims and claims <= pvcs

    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    assert services["edgefleet-server-headless"]["spec"]["clusterIP"] == "None"
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < spec["replicas"]

    # The k8s Prometheus config finds the replicas through the headless Service.
    prom = files.load_yaml(files.DEPLOY / "prometheus/prometheus-k8s.yml")
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["edgefleet-server-headless.edgefleet.svc.cluster.local"]
    assert sd["port"] == ports["metrics"]


def test_kustomization_lists_every_manifest():
    kustomization = files.load_yaml(files.K8S / "kustomization.yaml")
    manifests = {p.name for p in files.K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_builds():
    result = subprocess.run(["kubectl", "kustomize", str(files.K8S)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in files.yaml.safe_load_all(result.stdout) if doc)
    assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "Deployment", "Service", "Service",
                            "Service", "PodDisruptionBudget"])
